"""Co²L, C-Flat, CILA and COMM: each defining property, and two tasks of each through the real
loop (AdamW, clipping) with the state saved and reloaded between the tasks."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from cmcl.io import write_json
from cmcl.models import MultiHead
from cmcl.strategies import TaskContext, get_strategy
from cmcl.strategies.co2l import asym_supcon
from cmcl.strategies.pseudo import GaussianMemory
from cmcl.train import fit_task, load_strategy

DIMS = {"a": 6, "b": 6, "c": 6}  # one input size: COMM's agnostic router sees every modality
EMBED = 4
EQUAL_T = {"ird_current_temperature": 0.2, "ird_past_temperature": 0.2}


pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(method: str = "finetune", **opts) -> dict:
    return {"train": {"epochs": 3, "batch_size": 16, "lr": 0.05, "weight_decay": 0.01,
                      "grad_clip": 1.0},
            "loss": {"temperature": 0.1}, "methods": {method: opts}}


def pairs(pair, n: int, seed: int, classes: int = 0):
    """Two noisy views of a shared 3-d latent (one fixed map per modality); with `classes`,
    the latent is a class centre plus noise and the labels are the classes."""
    g = torch.Generator().manual_seed(seed)
    if classes:
        labels = torch.arange(n) % classes
        centres = 2 * torch.randn(classes, 3, generator=torch.Generator().manual_seed(7))
        lat = centres[labels] + 0.5 * torch.randn(n, 3, generator=g)
    else:
        labels, lat = torch.full((n,), -1), torch.randn(n, 3, generator=g)
    maps = {m: torch.randn(3, DIMS[m], generator=torch.Generator().manual_seed(ord(m)))
            for m in pair}
    xa, xb = (lat @ maps[m] + 0.1 * torch.randn(n, DIMS[m], generator=g) for m in pair)
    return xa, xb, labels


def new_model() -> MultiHead:
    model = MultiHead(DIMS, EMBED)
    model.reset("orthogonal", 0)
    return model


def fresh(method: str, model, directory=None, **opts):
    s = get_strategy(method, cfg(method, **opts))
    s.load_state(directory, model)
    return s


def fit(model, strategy, c, pair, step, n=64, classes=0):
    xa, xb, labels = pairs(pair, n, step, classes)
    return fit_task(model, strategy, c, {"name": f"t{step}", "modalities": pair}, step, 0,
                    xa, xb, labels)


def context(model, c, pair, step, n=48, classes=0) -> TaskContext:
    xa, xb, labels = pairs(pair, n, step, classes)
    return TaskContext(step, f"t{step}", pair, model, {pair[0]: xa, pair[1]: xb,
                                                       "labels": labels}, c)


def batch_of(ctx: TaskContext, n: int = 16) -> dict:
    a, b = ctx.modalities
    return {a: ctx.train[a][:n], b: ctx.train[b][:n], "labels": ctx.train["labels"][:n]}


# -- Co²L ---------------------------------------------------------------------------------
def supcon_by_hand(z, keys, n_cur: int, t: float) -> float:
    """Anchors: the first n_cur rows; positives: other anchors with the same key; every other
    row (past ones included) in the denominator."""
    zn = torch.nn.functional.normalize(z.detach(), dim=-1)
    s = zn @ zn.T / t
    per = []
    for i in range(n_cur):
        lse = torch.logsumexp(s[i, [k for k in range(len(z)) if k != i]], 0)
        pos = [j for j in range(n_cur) if j != i and keys[j] == keys[i]]
        if pos:
            per.append(-torch.stack([s[i, j] - lse for j in pos]).mean())
    return torch.stack(per).mean().item()


def test_asym_supcon_uses_past_rows_only_as_negatives():
    g = torch.Generator().manual_seed(0)
    n_cur, n_past = 10, 6
    z = torch.randn(n_cur + n_past, 5, generator=g, requires_grad=True)
    keys = torch.cat([torch.tensor([0, 1, 2, 0, 1, 2, 3, 3, -1, -2]), torch.arange(n_past) % 3])
    anchor = torch.arange(n_cur + n_past) < n_cur
    loss = asym_supcon(z, keys, anchor, 0.5)
    assert loss.item() == pytest.approx(supcon_by_hand(z, keys, n_cur, 0.5), rel=1e-6)
    # past labels never matter, not even when they equal the anchors' classes
    for past_keys in (keys[:n_past].clone(), torch.zeros(n_past, dtype=torch.long)):
        k2 = torch.cat([keys[:n_cur], past_keys])
        assert asym_supcon(z, k2, anchor, 0.5).item() == loss.item()
    perm = torch.cat([torch.arange(n_cur), n_cur + torch.randperm(n_past, generator=g)])
    assert asym_supcon(z[perm], keys[perm], anchor, 0.5).item() == pytest.approx(loss.item())
    # they are negatives: removing them lowers the loss, and they receive a gradient
    assert asym_supcon(z[:n_cur], keys[:n_cur], anchor[:n_cur], 0.5) < loss
    loss.backward()
    assert z.grad[n_cur:].norm() > 0


def test_co2l_buffer_is_past_only_labels_unused_and_ird_zero_at_start():
    model = new_model()
    s = fresh("co2l", model, memory_size=30, **EQUAL_T)
    c = cfg("co2l", memory_size=30, **EQUAL_T)
    s.after_task(context(model, c, ("a", "b"), 1, classes=3))
    assert s.buffer.size == 30 and set(s.buffer.task.tolist()) == {1}
    ctx = context(model, c, ("a", "c"), 2, classes=3)
    s.before_task(ctx)
    batch = batch_of(ctx)

    def terms():
        s.gen = torch.Generator().manual_seed(5)
        return s.terms(ctx, batch, {m: model(m, batch[m]) for m in ("a", "c")})

    t0 = terms()
    assert t0["ird"].item() == pytest.approx(0.0, abs=1e-7)  # the model is the past model
    # the same SupCon by hand: current pairs are the anchors, the replayed pairs only negatives
    with torch.no_grad():
        cur = torch.cat([model("a", batch["a"]), model("c", batch["c"])])
        past = [model(m, rb.x[m]) for rb in s.buffer.sample(16, torch.Generator().manual_seed(5))
                for m in rb.pair]
    keys = batch["labels"].repeat(2)
    assert keys.unique().numel() == 3 and (keys >= 0).all()  # class positives exist
    ref = supcon_by_hand(torch.cat([cur, *past]), keys, len(cur), s.opts["temperature"])
    assert t0["supcon"].item() == pytest.approx(ref, rel=1e-5)
    s.buffer.labels[:] = 0  # past pairs now share class 0 with current anchors
    assert terms()["supcon"].item() == t0["supcon"].item()
    s.buffer.feat["b"][:] = 0.0  # but their features (negatives) do matter
    assert terms()["supcon"].item() != t0["supcon"].item()
    with torch.no_grad():
        model.heads["a"].weight.add_(0.3 * torch.randn_like(model.heads["a"].weight))
    assert terms()["ird"].item() > 1e-4


# -- C-Flat -------------------------------------------------------------------------------
def quadratic_context(rho, lam, clip=None):
    """A loss ½ Σ A ⊙ (W − C)² over both heads: gradient A ⊙ (W − C), Hessian diag(A)."""
    model = new_model()
    g = torch.Generator().manual_seed(1)
    curv = {m: torch.rand(EMBED, DIMS[m], generator=g) * 5 + 0.1 for m in "ab"}
    target = {m: torch.randn(EMBED, DIMS[m], generator=g) for m in "ab"}
    c = cfg("cflat", rho=rho, **{"lambda": lam})
    c["train"]["grad_clip"] = clip
    calls = []

    def loss_fn(batch):
        calls.append(1)
        return sum(0.5 * (curv[m] * (model.heads[m].weight - target[m]) ** 2).sum() for m in "ab")

    ctx = TaskContext(1, "t1", ("a", "b"), model, {}, c, batch={}, loss_fn=loss_fn)
    loss_fn({}).backward()
    calls.clear()
    if clip:
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), clip)  # as the loop does

    def grad(w):
        return [curv[m] * (w[i] - target[m]) for i, m in enumerate("ab")]

    return ctx, model, grad, calls


def unit(gs, rho):
    n = torch.sqrt(sum((g ** 2).sum() for g in gs))
    return [rho * g / n for g in gs]


@pytest.mark.parametrize(("lam", "clip"), [(0.0, None), (0.5, None), (0.5, 0.3)])
def test_cflat_applies_the_sam_and_flatness_gradient_and_restores_weights(lam, clip):
    rho = 0.3
    ctx, model, grad, calls = quadratic_context(rho, lam, clip)
    w0 = [model.heads[m].weight.detach().clone() for m in "ab"]
    s = get_strategy("cflat", ctx.cfg)
    s.before_optimizer_step(ctx)
    for m, w in zip("ab", w0, strict=True):
        assert torch.equal(model.heads[m].weight, w)  # bitwise, not w + e - e
    g0 = grad(w0)
    g1 = grad([w + e for w, e in zip(w0, unit(g0, rho), strict=True)])  # ∇L(w + ρ g/‖g‖)
    expected = g1
    if lam:
        e1 = unit([a - b for a, b in zip(g1, g0, strict=True)], rho)
        g2 = grad([w + e for w, e in zip(w0, e1, strict=True)])
        e2 = [a + b for a, b in zip(e1, unit(g2, rho), strict=True)]
        g3 = grad([w + e for w, e in zip(w0, e2, strict=True)])
        expected = [a + lam * (c - b) for a, b, c in zip(g1, g2, g3, strict=True)]
    if clip:
        norm = torch.sqrt(sum((g ** 2).sum() for g in expected))
        expected = [g * min(1.0, clip / (norm.item() + 1e-6)) for g in expected]
    for m, e in zip("ab", expected, strict=True):
        assert torch.allclose(model.heads[m].weight.grad, e, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(model.heads["a"].weight.grad, g0[0])  # not the plain gradient
    assert len(calls) == (1 if not lam else 3 + bool(clip))


# -- CILA ---------------------------------------------------------------------------------
def test_cila_coefficient_follows_the_loss_ratio():
    model = new_model()
    s = fresh("cila", model, base_weight=2.0, max_ratio=50.0)
    assert s.coefficient() == 2.0  # nothing measured yet: plain Co²L weight
    s.history = [{"contrastive": 3.0, "distillation": 0.5}]
    big = s.coefficient()
    s.history = [{"contrastive": 0.5, "distillation": 3.0}]
    small = s.coefficient()
    assert big == pytest.approx(12.0) and small == pytest.approx(2 / 6) and big > 2 > small
    s.history = [{"contrastive": 4.0, "distillation": 1.0}, {"contrastive": 2.0,
                                                             "distillation": 2.0}]
    assert s.coefficient() == pytest.approx(2.0 * 3.0 / 1.5)  # ratio of the averages
    s.history = [{"contrastive": 1e3, "distillation": 1e-6}]
    assert s.coefficient() == pytest.approx(100.0)  # clipped to max_ratio
    assert fresh("cila", model, base_weight=2.0, adapt=False).coefficient() == 2.0


def test_cila_measures_losses_and_adapts_the_next_task(tmp_path):
    torch.manual_seed(0)
    model = new_model()
    s = fresh("cila", model, memory_size=40, **EQUAL_T)
    c = cfg("cila", memory_size=40, **EQUAL_T)
    ctx = context(model, c, ("a", "b"), 2)
    s.after_task(context(model, c, ("b", "c"), 1))
    s.before_task(ctx)
    batch = batch_of(ctx)
    emb = {m: model(m, batch[m]) for m in ("a", "b")}
    assert s.terms(ctx, batch, emb)["ird"].item() == pytest.approx(0.0, abs=1e-7)
    logs = []
    for step, pair in ((1, ("a", "b")), (2, ("b", "c")), (3, ("a", "c"))):
        s = fresh("cila", model, tmp_path if step > 1 else None, memory_size=40, **EQUAL_T)
        model, log = fit(model, s, c, pair, step)
        s.save_state(tmp_path)
        logs.append(log)
    assert [log["cila_weight"] for log in logs[:2]] == [1.0, 1.0]
    (h,) = s.history[:1]
    assert h["task"] == "t2" and h["distillation"] > 0 and h["contrastive"] > 0
    assert logs[2]["cila_weight"] == pytest.approx(h["contrastive"] / h["distillation"])
    assert len(s.history) == 2 and logs[2]["cila_weight"] != 1.0


# -- COMM ---------------------------------------------------------------------------------
def test_gaussian_pseudo_features_have_the_stored_moments():
    g = torch.Generator().manual_seed(3)
    n, da, db = 400, 4, 3
    labels = torch.arange(n) % 2
    lat = torch.randn(n, 2, generator=g) * torch.tensor([3.0, 1.0])
    mix = torch.randn(2, da + db, generator=g)
    x = lat @ mix + 0.3 * torch.randn(n, da + db, generator=g) + 4.0 * labels[:, None]
    for cov in ("lowrank", "diag"):
        mem = GaussianMemory(cov, rank=2)
        mem.add_task(1, "t1", ("a", "b"), x[:, :da], x[:, da:], labels, g)
        assert mem.entries[0]["groups"] == [0, 1]
        xa, xb, grp = mem.sample(0, 40_000, torch.Generator().manual_seed(4))
        xs = torch.cat([xa, xb], 1)
        for k in (0, 1):
            data, fake = x[labels == k], xs[grp == k]
            assert torch.allclose(mem.stats[0]["mean"][k], data.mean(0), atol=1e-5)
            model_cov = mem.covariance_of(0, k)
            # every coordinate's variance is the data's, exactly
            assert torch.allclose(model_cov.diag(), data.var(0), rtol=1e-4)
            se = (model_cov.diag() / len(fake)).sqrt()
            assert ((fake.mean(0) - data.mean(0)).abs() < 5 * se).all()
            emp = torch.cov(fake.T)
            assert (emp - model_cov).abs().max() < 0.08 * model_cov.diag().max()
            cross = model_cov[:da, da:].abs().max()
            if cov == "lowrank":  # the a-b correlation of the pairs is kept
                data_cross = torch.cov(data.T)[:da, da:]
                assert (model_cov[:da, da:] - data_cross).abs().max() < 0.1 * data_cross.abs().max()
                assert cross > 0.5
            else:
                assert cross == 0
    mem = GaussianMemory()
    mem.add_task(1, "t1", ("a", "b"), x[:, :da], x[:, da:], torch.full((n,), -1), g)
    assert mem.entries[0]["groups"] == [-1]  # no classes: one Gaussian for the task


@pytest.mark.parametrize("identity", [True, False])
def test_comm_two_tasks_reload_and_evaluation_sees_the_adapters(identity, tmp_path):
    torch.manual_seed(0)
    opts = {"modality_identity": identity, "pool_size": 3, "rank": 2}
    c = cfg("comm", **opts)
    s = fresh("comm", new_model(), **opts)
    model, log1 = fit(new_model(), s, c, ("a", "b"), 1, classes=4)
    s.save_state(tmp_path / "s1")
    s2 = fresh("comm", model, tmp_path / "s1", **opts)
    model, log2 = fit(model, s2, c, ("a", "c"), 2)
    (tmp_path / "s2" / "state").mkdir(parents=True)
    s2.save_state(tmp_path / "s2" / "state")
    write_json(tmp_path / "s2" / "meta.json", {"method": "comm", "options": s2.opts})
    assert all(math.isfinite(v) for v in log1["epoch_loss"] + log2["epoch_loss"])
    assert log1["comm_pseudo_groups"] == 4 and log2["comm_pseudo_groups"] == 1

    evaluated = load_strategy(tmp_path / "s2", model)  # what evaluation embeds through
    assert type(evaluated) is type(s2) and evaluated.opts == s2.opts
    x = torch.randn(20, 6, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        for m in "abc":
            assert torch.equal(evaluated.embed(model, m, x), s2.embed(model, m, x))
            assert not torch.allclose(evaluated.embed(model, m, x), model(m, x))  # adapters act

    for m in "abc":
        names, r = evaluated.route(m, x)
        assert torch.allclose(r.sum(1), torch.ones(len(x)))
        mixed = x + sum(r[:, j:j + 1] * evaluated.ad.delta(p, x) for j, p in enumerate(names))
        with torch.no_grad():  # embed = head(x + Σ_j R_j(x) Δ_j(x))
            assert torch.allclose(evaluated.embed(model, m, x), model(m, mixed), atol=1e-6)
        if identity:
            assert names == [m] and torch.equal(r, torch.ones(len(x), 1))
        else:
            assert names == ["a", "b", "c"]
    if identity:  # the given modality's pool alone acts: another pool changing changes nothing
        before = evaluated.embed(model, "a", x)
        evaluated.ad.pools["b"]["up"].add_(1.0)
        assert torch.equal(evaluated.embed(model, "a", x), before)
    else:  # the learned router recognises the modality of fresh inputs
        hits = []
        for m in "abc":  # b was seen in task 1 only (class-structured inputs)
            xm = pairs((m, "a" if m != "a" else "b"), 60, 11, 4 if m == "b" else 0)[0]
            names, r = evaluated.route(m, xm)
            hits.append((r.argmax(1) == names.index(m)).float().mean())
        assert min(hits) > 0.6, hits


def test_comm_self_regulariser_is_zero_until_the_model_moves():
    model = new_model()
    c = cfg("comm", realign_weight=0.0)
    s = fresh("comm", model, realign_weight=0.0)
    ctx1 = context(model, c, ("a", "b"), 1)
    s.before_task(ctx1)
    with torch.no_grad():
        s.ad.pools["a"]["up"].normal_()  # a trained-looking pool
    s.after_task(ctx1)
    ctx = context(model, c, ("a", "c"), 2)
    s.before_task(ctx)
    batch = batch_of(ctx)

    def reg():
        return s.terms(ctx, batch, {m: s.embed(model, m, batch[m]) for m in "ac"})["reg"].item()

    assert reg() == 0.0
    with torch.no_grad():
        s.ad.pools["a"]["down"].add_(0.5)
    assert reg() > 1e-4


# -- every added method: two tasks, state saved and reloaded, resume is exact -----------------
@pytest.mark.parametrize(("method", "opts"), [
    ("co2l", {"memory_size": 40}), ("cila", {"memory_size": 40}),
    ("cflat", {}), ("comm", {}), ("comm", {"modality_identity": False})])
def test_two_tasks_resume_exactly(method, opts, tmp_path):
    c = cfg(method, **opts)
    torch.manual_seed(1)
    s1 = fresh(method, new_model(), **opts)
    m1, log1 = fit(new_model(), s1, c, ("a", "b"), 1, classes=4)
    s1.save_state(tmp_path)

    def step2(strategy):
        torch.manual_seed(2)
        return fit(copy.deepcopy(m1), strategy, c, ("a", "c"), 2)

    s2 = fresh(method, m1, tmp_path, **opts)
    resumed, log2 = step2(s2)
    continued, _ = step2(s1)
    torch.manual_seed(2)
    plain, _ = fit(copy.deepcopy(m1), fresh("finetune", m1), cfg(), ("a", "c"), 2)
    for k, v in resumed.state_dict().items():
        assert torch.equal(v, continued.state_dict()[k]), f"{method}: resume differs at {k}"
    assert not torch.equal(resumed.heads["a"].weight, plain.heads["a"].weight)
    assert all(math.isfinite(x) for x in log1["epoch_loss"] + log2["epoch_loss"])
    x = torch.randn(8, 6)
    with torch.no_grad():  # what evaluation computes, method parts (adapters) included
        for m in "abc":
            assert torch.equal(s2.embed(resumed, m, x), s1.embed(continued, m, x))
