"""The defining invariant of DNS, tested through the real training loop (AdamW, clipping)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers.numerics import weight_atol

from cmcl.models import MultiHead
from cmcl.strategies import get_strategy
from cmcl.strategies.dns import DNS
from cmcl.subspace import FactoredGradients, RotatedHeads

DIMS = {"a": 12, "b": 10, "c": 9}
EMBED = 8


def cfg(**dns) -> dict:
    return {"train": {"epochs": 8, "batch_size": 16, "lr": 0.05, "weight_decay": 0.01,
                      "grad_clip": 1.0},
            "loss": {"temperature": 0.1},
            "methods": {"dns": {"threshold_mode": "relative", "threshold_in": 1e-6,
                                "threshold_out": 1e-6, **dns}}}


STEPS = 8 * 8  # optimizer steps of a new task: 8 epochs x 8 batches (see the path counts)


def low_rank(n: int, d: int, rank: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, rank, generator=g) @ torch.randn(rank, d, generator=g)


def fit(model, strategy, c, task, step, xa, xb, with_log=False):
    from cmcl.train import fit_task

    labels = torch.arange(len(xa))
    out = fit_task(model, strategy, c, {"name": f"t{step}", "modalities": task}, step, 0,
                   xa, xb, labels)
    return out if with_log else out[0]


@pytest.fixture(scope="module")
def old_task():
    """Step 1 trains (a, b) on rank-4 data; returns the model, DNS state and the old pairs."""
    torch.manual_seed(0)
    model = MultiHead(DIMS, EMBED)
    model.reset("orthogonal", 0)
    xa, xb = low_rank(96, DIMS["a"], 4, 1), low_rank(96, DIMS["b"], 4, 2)
    strat = get_strategy("dns", cfg())
    strat.load_state(None, model)
    model = fit(model, strat, cfg(), ("a", "b"), 1, xa, xb)
    return model, strat.state, xa, xb


def similarities(model, xa, xb):
    with torch.no_grad():
        return model("a", xa) @ model("b", xb).T


def train_new_task(old, method="dns", one_step=False, train=None, **dns):
    """Step 2 trains (a, c) on full-rank data; returns the model, the log, the old-pair
    similarity drift and how far head a moved."""
    model0, state, xa, xb = old
    model = copy.deepcopy(model0)
    c = cfg(**dns)
    if one_step:  # a single full-batch AdamW step: same raw update for every variant
        c["train"] |= {"epochs": 1, "batch_size": 128}
    c["train"] |= train or {}
    strat = get_strategy(method, c)
    if method == "dns":
        strat.load_state(None, model)
        strat.state = copy.deepcopy(state)
    xa_new, xc_new = low_rank(128, DIMS["a"], 12, 3), low_rank(128, DIMS["c"], 9, 4)
    before = similarities(model, xa, xb)
    w0 = model.heads["a"].weight.detach().clone()
    model, log = fit(model, strat, c, ("a", "c"), 2, xa_new, xc_new, with_log=True)
    drift = (similarities(model, xa, xb) - before).abs().max().item() / before.abs().max().item()
    moved = (model.heads["a"].weight - w0).norm().item()
    return model, log, drift, moved


def run_new_task(old, method="dns", one_step=False, **dns):
    return train_new_task(old, method, one_step, **dns)[2:]


def test_exact_dns_keeps_old_similarities_while_finetune_does_not(old_task):
    drift_dns, moved = run_new_task(old_task)
    drift_ft, _ = run_new_task(old_task, "finetune")
    assert moved > 0.1, "DNS must still learn the new task"
    assert drift_dns < 1e-5, f"exact DNS moved old similarities by {drift_dns:.2e}"
    assert drift_ft > 0.05, f"fine-tuning should change old similarities (drift {drift_ft})"


def test_faithful_placement_drifts_and_the_drift_is_reported(old_task):
    drift_faithful, _ = run_new_task(old_task, placement="faithful")
    drift_exact, _ = run_new_task(old_task)
    print(f"faithful DNS relative drift of old similarities: {drift_faithful:.3e}")
    # AdamW's per-coordinate scaling and weight decay leave the protected subspace
    assert drift_faithful > 100 * max(drift_exact, 1e-9)


def test_one_sided_variants_hold_the_invariant_but_move_less(old_task):
    drift_in, _ = run_new_task(old_task, sides="input")
    drift_out, _ = run_new_task(old_task, sides="output")
    assert max(drift_in, drift_out) < 1e-5
    # same state and raw update: dual-sided removes only P_out G P_in, less than either side
    _, moved_in = run_new_task(old_task, one_step=True, sides="input")
    _, moved_out = run_new_task(old_task, one_step=True, sides="output")
    _, moved_both = run_new_task(old_task, one_step=True)
    _, moved_free = run_new_task(old_task, "finetune", one_step=True)
    assert moved_free > moved_both > max(moved_in, moved_out) * 1.01


def test_exact_dns_with_bias_treats_it_as_an_input_column(old_task):
    model0, _, xa, xb = old_task
    model = MultiHead(DIMS, EMBED, bias=True)
    model.load_state_dict(model0.state_dict(), strict=False)
    strat = get_strategy("dns", cfg())
    strat.load_state(None, model)
    model = fit(model, strat, cfg(), ("a", "b"), 1, xa, xb)
    assert strat.state.in_cov["a"].dim == DIMS["a"] + 1
    before = similarities(model, xa, xb)
    xa_new, xc_new = low_rank(128, 12, 12, 5), low_rank(128, 9, 9, 6)
    model = fit(model, strat, cfg(), ("a", "c"), 2, xa_new, xc_new)
    drift = (similarities(model, xa, xb) - before).abs().max() / before.abs().max()
    assert drift < 1e-5


def test_state_round_trip_and_shape_mismatch(old_task, tmp_path):
    _, state, _, _ = old_task
    state.save(tmp_path)
    strat = get_strategy("dns", cfg())
    strat.load_state(tmp_path, MultiHead(DIMS, EMBED))
    p_out, p_in = strat.projectors("a")
    q_out, q_in = (state.projector("a", s, "relative", 1e-6) for s in ("out", "in"))
    assert torch.allclose(p_in.matrix(), q_in.matrix()) and p_in.rank == 4
    assert torch.allclose(p_out.matrix(), q_out.matrix())
    with pytest.raises(ValueError, match=r"subspace\.json.*'a'.*(12.*13|13.*12)"):
        strat.load_state(tmp_path, MultiHead({**DIMS, "a": 13}, EMBED))


@pytest.mark.parametrize("clip", [1e-3, 0])
def test_faithful_factored_gradients_equal_the_dense_projection(old_task, monkeypatch, clip):
    """The fast path of the faithful placement is the same algorithm: projecting Δᵀ X through
    its factors (clipping factor recovered) gives the weights the dense projection gives."""
    fast, log, _, _ = train_new_task(old_task, train={"grad_clip": clip}, placement="faithful")
    assert log["dns_gradient_paths"] == {"factored": 8 * 8, "dense": 0}  # c has no past
    monkeypatch.setattr(FactoredGradients, "usable", staticmethod(lambda: False))
    slow, log, _, _ = train_new_task(old_task, train={"grad_clip": clip}, placement="faithful")
    assert log["dns_gradient_paths"] == {"factored": 0, "dense": 8 * 8}
    for m in ("a", "c"):  # equal in exact arithmetic: bounded by the reordered float32 sums
        w = slow.heads[m].weight
        torch.testing.assert_close(fast.heads[m].weight, w, rtol=0, atol=weight_atol(
            w, STEPS, cfg()["train"]["lr"], cfg()["train"]["batch_size"]))


class PenalisedDNS(DNS):
    """DNS faithful plus a weight penalty: its gradient is no longer Δᵀ X."""

    name = "dns"

    def extra_loss(self, ctx, batch, emb):
        return 1e-2 * ctx.model.heads["a"].weight.pow(2).sum()


def test_faithful_falls_back_to_the_dense_path_when_the_gradient_is_not_its_factors(old_task):
    model0, state, _, _ = old_task
    c = cfg(placement="faithful")
    strat = PenalisedDNS(c)
    strat.load_state(None, model0)
    strat.state = copy.deepcopy(state)
    xa_new, xc_new = low_rank(128, DIMS["a"], 12, 3), low_rank(128, DIMS["c"], 9, 4)
    _, log = fit(copy.deepcopy(model0), strat, c, ("a", "c"), 2, xa_new, xc_new, with_log=True)
    assert log["dns_gradient_paths"] == {"factored": 0, "dense": 8 * 8}


@pytest.mark.parametrize("sides", ["both", "input", "output"])
def test_rotated_placement_keeps_old_similarities(old_task, sides):
    model, _, drift, moved = train_new_task(old_task, placement="rotated", sides=sides)
    _, _, drift_ft, _ = train_new_task(old_task, "finetune")
    assert moved > 0.1, "rotated DNS must still learn the new task"
    assert drift < 1e-5, f"rotated DNS ({sides}) moved old similarities by {drift:.2e}"
    assert drift_ft > 0.05
    for head in model.heads.values():  # hooks gone, weights back in the original coordinates
        assert not head._forward_hooks and not head._forward_pre_hooks


def spy_input_rotations(monkeypatch) -> list[tuple[str, bool, bool]]:
    """Record each RotatedHeads.rotate_inputs call: (modality, rotated?, input hook installed?)."""
    calls: list[tuple[str, bool, bool]] = []
    real = RotatedHeads.rotate_inputs

    def rotate(self, modality, x, rows=65536):
        y = real(self, modality, x, rows)
        head = self.heads.get(modality)
        calls.append((modality, y is not x, bool(head is not None and head._forward_pre_hooks)))
        return y

    monkeypatch.setattr(RotatedHeads, "rotate_inputs", rotate)
    return calls


@pytest.mark.parametrize("sides", ["both", "input", "output"])
def test_rotated_inputs_once_per_task_equal_the_per_batch_hooks(old_task, monkeypatch, sides):
    """The task's features are rotated once (train_inputs, no input hook) and training ends
    where rotating every batch by a forward hook ended, to float rounding."""
    calls = spy_input_rotations(monkeypatch)
    once, log_once, drift, moved = train_new_task(old_task, placement="rotated", sides=sides)
    # head a has a past (rotated unless only its output side is protected); c has none
    assert calls == [("a", sides != "output", False), ("c", False, False)]
    assert drift < 1e-5 and moved > 0.1
    monkeypatch.setattr(DNS, "per_task_inputs", False)
    hooked, log_hooked, _, _ = train_new_task(old_task, placement="rotated", sides=sides)
    assert len(calls) == 2, "the per-batch reference must not rotate the features"
    for m in ("a", "c"):  # equal in exact arithmetic: bounded by the reordered float32 sums
        w = hooked.heads[m].weight
        torch.testing.assert_close(once.heads[m].weight, w, rtol=0, atol=weight_atol(
            w, STEPS, cfg()["train"]["lr"], cfg()["train"]["batch_size"]))
    assert log_once["epoch_loss"] == pytest.approx(log_hooked["epoch_loss"], rel=1e-5)


def test_rotated_placement_is_another_optimizer_with_the_same_first_loss(old_task):
    """Same forward pass (first-epoch losses start alike) but AdamW acts in rotated
    coordinates, so the weights differ from exact DNS: it is an opt-in option, not a path."""
    exact, log_e, _, _ = train_new_task(old_task)
    rot, log_r, _, _ = train_new_task(old_task, placement="rotated")
    assert abs(log_e["epoch_loss"][0] - log_r["epoch_loss"][0]) < 0.05 * log_e["epoch_loss"][0]
    assert (exact.heads["a"].weight - rot.heads["a"].weight).abs().max() > 1e-3
    assert get_strategy("dns", {}).opts["placement"] == "exact"


def test_rotated_placement_refuses_heads_with_a_bias():
    strat = get_strategy("dns", cfg(placement="rotated"))
    with pytest.raises(ValueError, match=r"methods\.dns\.placement.*bias"):
        strat.load_state(None, MultiHead(DIMS, EMBED, bias=True))


@pytest.mark.parametrize("placement", ["exact", "faithful", "rotated"])
def test_preemption_checkpoints_record_only_the_path_counters(old_task, placement):
    from cmcl.strategies import TaskContext

    model0, state, _, _ = old_task
    model = copy.deepcopy(model0)
    strat = get_strategy("dns", cfg(placement=placement))
    strat.load_state(None, model)
    strat.state = copy.deepcopy(state)
    ctx = TaskContext(2, "t2", ("a", "c"), model, {}, cfg())
    strat.before_task(ctx)  # hooks installed: the checkpoint must not try to record them
    meta, tensors = strat.task_state()
    assert tensors == {} and json.loads(json.dumps(meta)) == meta
    strat.paths["factored"] = 3
    strat.load_task_state(meta, tensors)
    assert strat.paths == {"factored": 0, "dense": 0}
    strat._close(ctx)
