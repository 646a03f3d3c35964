"""Baseline continual-learning methods: each defining property, state round trips, and a
two-task run of every method through the real loop (AdamW, clipping, save/load between steps)."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch

from cmcl.metrics import retrieval_metrics
from cmcl.models import MultiHead
from cmcl.strategies import TaskContext, get_strategy
from cmcl.strategies.gem import agem_project, gem_project
from cmcl.strategies.helpers.replay import ReservoirBuffer

DIMS = {"a": 6, "b": 5, "c": 4}
EMBED = 4
METHODS = ["ewc", "lwf", "er", "der", "derpp", "gem", "agem"]


pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(method: str = "finetune", **opts) -> dict:
    return {"train": {"epochs": 3, "batch_size": 16, "lr": 0.05, "weight_decay": 0.01,
                      "grad_clip": 1.0},
            "loss": {"temperature": 0.1}, "methods": {method: opts}}


def pairs(pair: tuple[str, str], n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views of a shared 3-d latent, so the pair is learnable; one fixed map per modality
    (one encoder), so a new seed draws new pairs from the same distribution."""
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(n, 3, generator=g)
    maps = {m: torch.randn(3, DIMS[m], generator=torch.Generator().manual_seed(ord(m)))
            for m in pair}
    return tuple(lat @ maps[m] + 0.1 * torch.randn(n, DIMS[m], generator=g) for m in pair)


def new_model() -> MultiHead:
    model = MultiHead(DIMS, EMBED)
    model.reset("orthogonal", 0)
    return model


def context(model, c, pair, step=1, n=48, seed=1) -> TaskContext:
    xa, xb = pairs(pair, n, seed)
    return TaskContext(step, f"t{step}", pair, model,
                       {pair[0]: xa, pair[1]: xb, "labels": torch.arange(n)}, c)


def fit(model, strategy, c, pair, step, n=64, seed=None):
    from cmcl.train import fit_task

    xa, xb = pairs(pair, n, step if seed is None else seed)
    return fit_task(model, strategy, c, {"name": f"t{step}", "modalities": pair}, step, 0,
                    xa, xb, torch.arange(n))


def fresh(method: str, model, directory=None, **opts):
    s = get_strategy(method, cfg(method, **opts))
    s.load_state(directory, model)
    return s


# -- EWC ----------------------------------------------------------------------------------
def test_ewc_penalty_zero_at_anchor_and_weighted_by_fisher():
    model, c = new_model(), cfg("ewc", **{"lambda": 2.0, "gamma": 0.5})
    s = fresh("ewc", model, **c["methods"]["ewc"])
    ctx = context(model, c, ("a", "b"))
    s.after_task(ctx)
    assert s.penalty(model, ("a", "b")) == 0  # at the anchor
    f = s.fisher["heads.a.weight"]
    hi, lo = int(f.argmax()), int(f.argmin())
    assert f.reshape(-1)[hi] > 10 * f.reshape(-1)[lo]
    grow, moved = [], {}
    for i in (hi, lo):
        for d in (0.1, 0.2):
            m = copy.deepcopy(model)
            with torch.no_grad():
                m.heads["a"].weight.view(-1)[i] += d
            moved[i, d] = s.penalty(m, ("a", "b")).item()
        grow.append(moved[i, 0.2] / moved[i, 0.1])
    assert grow == pytest.approx([4.0, 4.0], rel=1e-3)  # quadratic in the distance
    assert moved[hi, 0.1] == pytest.approx(2.0 / 2 * f.reshape(-1)[hi].item() * 0.01, rel=1e-3)
    assert moved[hi, 0.1] > 10 * moved[lo, 0.1]
    f1 = {k: v.clone() for k, v in s.fisher.items()}
    s.after_task(ctx)  # same model and data: F_t = F1, so F = 0.5 F1 + F1
    assert torch.allclose(s.fisher["heads.a.weight"], 1.5 * f1["heads.a.weight"])


# -- reservoir buffer ---------------------------------------------------------------------
def test_reservoir_keeps_a_uniform_sample_of_fixed_size():
    n, cap, seeds = 10_000, 100, 200
    counts = np.zeros(n)
    x = torch.zeros(n, 1)
    for seed in range(seeds):
        buf = ReservoirBuffer(cap, seed)
        for lo, hi in itertools.pairwise([0, 1, 8, 100, 600, *range(900, n, 300), n]):
            buf.add(x[lo:hi], x[lo:hi], ("a", "b"), torch.arange(lo, hi), 0)
            assert buf.size <= cap
        assert buf.size == cap and buf.n_seen == n
        kept = buf.labels.numpy()
        assert len(np.unique(kept)) == cap  # no item twice
        counts[kept] += 1
    expected = seeds * cap / n
    blocks = counts.reshape(10, -1).sum(1)  # position bias: early vs late items
    chi_blocks = ((blocks - blocks.mean()) ** 2 / blocks.mean()).sum()
    assert chi_blocks < 27.9, f"inclusion depends on position (chi2_9 = {chi_blocks:.1f})"
    chi_items = ((counts - expected) ** 2 / expected).sum()  # ~ chi2 with n - 1 dof
    assert abs(chi_items - (n - 1)) < 6 * math.sqrt(2 * (n - 1))


def test_reservoir_save_load_continues_the_same_decisions(tmp_path):
    g = torch.Generator().manual_seed(0)
    buf = ReservoirBuffer(20, 7, store_embeddings=True)
    for step, pair in ((1, ("a", "b")), (2, ("a", "c"))):
        for _ in range(5):
            xa, xb = (torch.randn(16, DIMS[m], generator=g) for m in pair)
            buf.add(xa, xb, pair, torch.arange(16), step, torch.randn(16, EMBED, generator=g),
                    torch.randn(16, EMBED, generator=g))
    buf.save(tmp_path, "buffer")
    loaded = ReservoirBuffer.load(tmp_path, "buffer")
    for _ in range(4):
        xa, xb, za, zb = (torch.randn(16, d, generator=g) for d in (6, 4, EMBED, EMBED))
        for b in (buf, loaded):
            b.add(xa, xb, ("a", "c"), torch.arange(16), 3, za, zb)
    for k in ("pair", "labels", "task"):
        assert torch.equal(getattr(buf, k), getattr(loaded, k))
    for m in DIMS:
        assert torch.equal(buf.feat[m], loaded.feat[m]) and torch.equal(buf.emb[m], loaded.emb[m])
    assert buf._json() == loaded._json()
    groups = loaded.sample(12, torch.Generator().manual_seed(1))
    assert sum(len(rb) for rb in groups) == 12
    assert {rb.pair for rb in groups} <= {("a", "b"), ("a", "c")}
    for rb in groups:  # each group reads its own modalities' tables
        assert rb.x[rb.pair[1]].shape[1] == DIMS[rb.pair[1]]


# -- GEM / A-GEM --------------------------------------------------------------------------
@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_gem_projection_satisfies_every_memory_constraint(margin):
    g0 = torch.Generator().manual_seed(3)
    for _ in range(20):
        mem = torch.randn(5, 40, generator=g0)
        g = -mem.sum(0) + 0.5 * torch.randn(40, generator=g0)  # conflicts with most rows
        assert (mem @ g < 0).any()
        new = gem_project(g, mem, margin)
        tol = 1e-5 * mem.norm() * g.norm()
        assert (mem @ new >= -tol).all(), (mem @ new)
        if margin == 0:  # the QP optimum is no farther than the feasible point 0
            assert (new - g).norm() <= g.norm() + 1e-5
    agree = torch.randn(40, generator=g0).abs()
    ok_mem = torch.cat([torch.rand(4, 40, generator=g0), torch.zeros(1, 40)])
    assert gem_project(agree, ok_mem, margin) is agree  # no conflict: g is left alone


def test_agem_projection_and_non_conflicting_gradient():
    g0 = torch.Generator().manual_seed(4)
    for _ in range(20):
        ref, g = torch.randn(30, generator=g0), torch.randn(30, generator=g0)
        new = agem_project(g, ref)
        assert new @ ref >= -1e-5
        if g @ ref >= 0:
            assert new is g
        else:
            assert torch.allclose(new, g - (g @ ref) / (ref @ ref) * ref)
    assert agem_project(ref, ref) is ref


@pytest.mark.parametrize("method", ["gem", "agem"])
def test_gem_hooks_project_the_real_head_gradients(method):
    """Through before_optimizer_step: memory grads over the same params that hold .grad."""
    model = new_model()
    s = fresh(method, model, memory_per_task=32)
    c1 = cfg(method)
    s.after_task(context(model, c1, ("a", "b"), step=1))
    s.after_task(context(model, c1, ("b", "c"), step=2, seed=2))
    ctx = context(model, c1, ("a", "c"), step=3, seed=3)
    s.before_task(ctx)
    params = [p for m in ("a", "c") for p in model.heads[m].parameters()]
    batches = s.memory.task_batches()
    refs = [s.memory_grad(ctx, params, [rb]) for rb in batches]
    assert all(r is not None and r.norm() > 0 for r in refs)
    for p, r in zip(params, torch.stack(refs).sum(0).split([p.numel() for p in params]),
                    strict=True):
        p.grad = -r.view_as(p).clone()  # conflicts with both past tasks
    s.before_optimizer_step(ctx)
    g = torch.cat([p.grad.reshape(-1) for p in params])
    if method == "gem":
        assert all(g @ r >= -1e-5 for r in refs)
    else:
        assert g @ s.memory_grad(ctx, params, s.memory.sample(10**6, s.gen)) >= -1e-4
    assert s.projected == 1


# -- DER / DER++ --------------------------------------------------------------------------
def test_derpp_has_both_replay_terms_and_der_only_the_embedding_term():
    model = new_model()
    filler = fresh("derpp", model, memory_size=40)
    model = fit(model, filler, cfg("derpp", memory_size=40), ("a", "b"), 1)[0]
    assert filler.buffer.size == 40 and set(filler.buffer.emb) == {"a", "b"}
    with torch.no_grad():
        model.heads["a"].weight.add_(0.3 * torch.randn_like(model.heads["a"].weight))
    ctx = context(model, cfg("derpp"), ("a", "c"), step=2)
    batch = {m: ctx.train[m][:16] for m in ("a", "c")}
    emb = {m: model(m, batch[m]) for m in ("a", "c")}

    def loss(method, **opts):
        s = get_strategy(method, cfg(method, memory_size=40, **opts))
        s.buffer, s.gen = filler.buffer, torch.Generator().manual_seed(0)
        out = s.extra_loss(ctx, batch, emb)
        return 0.0 if out is None else out.item()

    none, mse, nce = loss("derpp", alpha=0, beta=0), loss("derpp", alpha=1, beta=0), \
        loss("derpp", alpha=0, beta=1)
    assert none == 0 and mse > 0 and nce > 0
    assert loss("derpp", alpha=1, beta=1) == pytest.approx(mse + nce, rel=1e-5)
    assert loss("der", alpha=1) == pytest.approx(mse, rel=1e-6)
    assert loss("der", alpha=0) == 0
    s = fresh("der", model, memory_size=40)  # insertion keeps the embeddings the loss saw
    s.before_task(ctx)
    assert s.extra_loss(ctx, batch, emb) is None  # empty buffer: nothing to replay
    ctx.batch = {**batch, "labels": torch.arange(16)}
    s.after_optimizer_step(ctx)
    assert s.buffer.size == 16 and torch.equal(s.buffer.emb["c"][:16], emb["c"].detach())
    with pytest.raises(ValueError, match="beta"):
        get_strategy("der", cfg("der", beta=1.0))


# -- LwF ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("opts", "seen"), [
    ({}, "ab"), ({"distance": "mse"}, "ab"), ({"target": "embedding"}, "ab"),
    ({"target": "both"}, "a"), ({}, "a"), ({"heads": "all"}, "")])
def test_lwf_term_is_zero_until_the_model_changes(opts, seen):
    model = new_model()
    s = fresh("lwf", model, **opts)
    ctx = context(model, cfg("lwf", **opts), ("a", "b"), step=2)
    batch = {m: ctx.train[m][:16] for m in ("a", "b")}

    def term():
        out = s.extra_loss(ctx, batch, {m: model(m, batch[m]) for m in "ab"})
        return None if out is None else out.item()

    s.before_task(ctx)
    assert term() is None  # first task: nothing to distil
    s.tasks, s.seen = ["t1"], list(seen)
    s.before_task(ctx)
    assert term() == 0.0
    with torch.no_grad():
        model.heads["b"].weight.add_(0.2 * torch.randn_like(model.heads["b"].weight))
    if "b" not in seen and s.opts["heads"] == "seen":
        assert term() == 0.0  # a head first met now is free to learn
    with torch.no_grad():
        model.heads["a"].weight.add_(0.2 * torch.randn_like(model.heads["a"].weight))
    assert term() > 1e-4


# -- state round trips and the two-task run -------------------------------------------------
@pytest.mark.parametrize("method", ["er", "der", "gem"])
def test_state_round_trip(method, tmp_path):
    model = new_model()
    s = fresh(method, model, **({"memory_per_task": 20} if method == "gem" else
                                {"memory_size": 30}))
    fit(model, s, cfg(method), ("a", "b"), 1)
    s.save_state(tmp_path)
    t = fresh(method, model, tmp_path, **s.opts)
    mem, back = (s.memory, t.memory) if method == "gem" else (s.buffer, t.buffer)
    assert mem.size > 0 and mem._json() == back._json()
    for k in ("pair", "labels", "task"):
        assert torch.equal(getattr(mem, k), getattr(back, k))
    for m in mem.feat:
        assert torch.equal(mem.feat[m], back.feat[m])
    for m in mem.emb:
        assert torch.equal(mem.emb[m], back.emb[m])
    with pytest.raises(ValueError, match="dim"):
        fresh(method, MultiHead({**DIMS, "a": 7}, EMBED), tmp_path, **s.opts)


def test_er_streams_first_epoch_only_and_can_train_replayed_heads():
    model = new_model()
    for stream, seen in (("all", 3 * 64), ("first", 64)):
        s = fresh("er", model, memory_size=500, stream_epochs=stream)
        fit(copy.deepcopy(model), s, cfg("er"), ("a", "b"), 1)
        assert s.buffer.n_seen == seen == s.buffer.size
    for train_b in (False, True):
        m = copy.deepcopy(model)
        t = fresh("er", m, memory_size=500, train_replayed_heads=train_b)
        t.buffer = s.buffer
        b0 = m.heads["b"].weight.detach().clone()
        m = fit(m, t, cfg("er"), ("a", "c"), 2)[0]
        assert torch.equal(m.heads["b"].weight, b0) != train_b
        assert m.heads["b"].weight.grad is None  # nothing left behind on a frozen head


def old_task_map(model, strategy) -> float:
    xa, xb = pairs(("a", "b"), 40, 99)  # a fresh draw: not the pairs task 1 trained on
    with torch.no_grad():
        za, zb = (torch.nn.functional.normalize(strategy.embed(model, m, x), dim=-1)
                  for m, x in (("a", xa), ("b", xb)))
    return retrieval_metrics(za, zb, None, "instance")["map"]


@pytest.mark.parametrize("method", METHODS)
def test_two_tasks_resume_exactly_and_measure_the_old_task(method, tmp_path):
    torch.manual_seed(1)
    s1 = fresh(method, new_model())
    m1, log1 = fit(new_model(), s1, cfg(method), ("a", "b"), 1)
    s1.save_state(tmp_path)
    map1 = old_task_map(m1, s1)

    def step2(strategy):
        torch.manual_seed(2)
        return fit(copy.deepcopy(m1), strategy, cfg(method), ("a", "c"), 2)

    resumed, log2 = step2(fresh(method, m1, tmp_path))
    continued, _ = step2(s1)  # the same object that trained step 1, never saved or loaded
    torch.manual_seed(2)
    finetuned, _ = fit(copy.deepcopy(m1), fresh("finetune", m1), cfg(), ("a", "c"), 2)
    for k, v in resumed.state_dict().items():
        assert torch.equal(v, continued.state_dict()[k]), f"{method}: resume differs at {k}"
    assert not torch.equal(resumed.heads["a"].weight, finetuned.heads["a"].weight), \
        f"{method} did nothing at step 2"
    assert all(math.isfinite(x) for x in log1["epoch_loss"] + log2["epoch_loss"])
    map2 = old_task_map(resumed, s1)
    assert 0 < map2 <= 1 and 0 < map1 <= 1
    print(f"{method}: old-task mAP {map1:.3f} -> {map2:.3f}")
