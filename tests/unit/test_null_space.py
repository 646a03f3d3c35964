"""GPM and Adam-NSCL through the real training loop (AdamW, clipping): old head outputs W_a x_old
stay fixed when the *update* is projected, drift when GPM projects the raw gradient; ranks
follow the thresholds; state round trips; options are validated with their dotted name."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.numerics import weight_atol

from cmcl.models import MultiHead
from cmcl.strategies import get_strategy
from cmcl.strategies.adam_nscl import min_ratio_rank
from cmcl.strategies.bases.null_space import NullSpaceProjection
from cmcl.subspace import FactoredGradients, RotatedHeads, null_space_update

DIMS = {"a": 12, "b": 10, "c": 9}
EMBED = 8
# energy 0.9999 keeps the whole 4-dim span of exactly rank-4 data (rounding noise holds ~1e-13)
GPM_SPAN = {"threshold_mode": "energy", "threshold": 0.9999}


def cfg(method: str, **opts) -> dict:
    return {"train": {"epochs": 8, "batch_size": 16, "lr": 0.05, "weight_decay": 0.01,
                      "grad_clip": 1.0},
            "loss": {"temperature": 0.1}, "methods": {method: opts}}


def low_rank(n: int, d: int, rank: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, rank, generator=g) @ torch.randn(rank, d, generator=g)


def fit(model, strategy, c, task, step, xa, xb):
    from cmcl.train import fit_task

    return fit_task(model, strategy, c, {"name": f"t{step}", "modalities": task}, step, 0,
                    xa, xb, torch.arange(len(xa)))


def old_task(method: str, bias: bool = False, **opts):
    """Step 1 trains (a, b) on rank-4 inputs; returns the model, strategy and old a-inputs."""
    torch.manual_seed(0)
    model = MultiHead(DIMS, EMBED, bias=bias)
    model.reset("orthogonal", 0)
    xa, xb = low_rank(96, DIMS["a"], 4, 1), low_rank(96, DIMS["b"], 4, 2)
    strat = get_strategy(method, cfg(method, **opts))
    strat.load_state(None, model)
    model, _ = fit(model, strat, cfg(method, **opts), ("a", "b"), 1, xa, xb)
    return model, strat, xa


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices gain nothing from threads, which only spin against other jobs on a
    shared CPU; restore the count for other test modules."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def old():
    return {"gpm": old_task("gpm", **GPM_SPAN), "adam_nscl": old_task("adam_nscl")}


def new_task(old_run, method: str, train: dict | None = None, **opts):
    """Step 2 trains (a, c) on full-rank data; returns the model, relative drift of W_a x_old
    and how far head a moved."""
    model0, strat0, xa = old_run
    model = copy.deepcopy(model0)
    c = cfg(method, **opts)
    c["train"] |= train or {}
    strat = get_strategy(method, c)
    strat.load_state(None, model)
    if hasattr(strat0, "state") and hasattr(strat, "state"):
        strat.state = copy.deepcopy(strat0.state)
    with torch.no_grad():
        before = model("a", xa)
    w0 = model.heads["a"].weight.detach().clone()
    xa_new, xc_new = low_rank(128, DIMS["a"], 12, 3), low_rank(128, DIMS["c"], 9, 4)
    model, log = fit(model, strat, c, ("a", "c"), 2, xa_new, xc_new)
    with torch.no_grad():
        drift = (model("a", xa) - before).abs().max().item() / before.abs().max().item()
    return model, drift, (model.heads["a"].weight - w0).norm().item()


def new_task_drift(old_run, method: str, **opts) -> tuple[float, float]:
    return new_task(old_run, method, **opts)[1:]


def test_update_placement_keeps_old_outputs_while_finetune_does_not(old):
    drift_nscl, moved_nscl = new_task_drift(old["adam_nscl"], "adam_nscl")
    drift_gpm, moved_gpm = new_task_drift(old["gpm"], "gpm", placement="update", **GPM_SPAN)
    drift_ft, _ = new_task_drift(old["gpm"], "finetune")
    print(f"relative drift of W_a x_old: adam_nscl {drift_nscl:.2e}, gpm/update "
          f"{drift_gpm:.2e}, finetune {drift_ft:.2e}")
    assert min(moved_nscl, moved_gpm) > 0.1, "the new task must still be learned"
    assert drift_nscl < 1e-5 and drift_gpm < 1e-5
    assert drift_ft > 0.05


def test_gpm_gradient_placement_drifts_under_adamw(old):
    drift_grad, moved = new_task_drift(old["gpm"], "gpm", placement="gradient", **GPM_SPAN)
    drift_upd, _ = new_task_drift(old["gpm"], "gpm", placement="update", **GPM_SPAN)
    print(f"GPM relative drift of W_a x_old: gradient {drift_grad:.3e}, update {drift_upd:.3e}")
    assert moved > 0.1
    # AdamW's per-coordinate scaling and weight decay leave the protected subspace
    assert drift_grad > 100 * max(drift_upd, 1e-9)


def test_gpm_rank_follows_the_energy_threshold():
    """Inputs with covariance eigenvalues ∝ 4, 3, 2, 1 (energy 0.4, 0.7, 0.9, 1.0 cumulative)."""
    q, _ = torch.linalg.qr(torch.randn(40, DIMS["a"], generator=torch.Generator().manual_seed(7)))
    xa = q * torch.tensor([4.0, 3, 2, 1] + [0] * (DIMS["a"] - 4)).sqrt()
    model = MultiHead(DIMS, EMBED)
    strat = get_strategy("gpm", cfg("gpm"))
    strat.load_state(None, model)
    _, log = fit(model, strat, cfg("gpm"), ("a", "b"), 1, xa, torch.randn(40, DIMS["b"]))
    assert "gpm_ranks" in log and log["gpm_ranks"] == {}  # nothing to protect at step 1
    for eps, rank in [(0.3, 1), (0.35, 1), (0.5, 2), (0.85, 3), (0.95, 4), (0.97, 4)]:
        s = get_strategy("gpm", cfg("gpm", threshold=eps))
        s.state = strat.state
        assert s.input_projector("a").rank == rank, f"energy {eps}"
    assert strat.input_projector("b").rank > 0


def test_adam_nscl_rules_and_rank(old):
    vals = torch.tensor([100.0, 50.0, 1.0, 0.5], dtype=torch.float64)
    assert min_ratio_rank(vals, 3.0) == 2  # null space = {λ ≤ 1.5}
    assert min_ratio_rank(vals, 1.001) == 3
    assert min_ratio_rank(torch.tensor([2.0, 1.0, 0.0, 0.0]), 10.0) == 2  # λ_min 0: zeros only
    _, strat, _ = old["adam_nscl"]
    assert strat.input_projector("a").rank == 4  # relative 1e-3 keeps the rank-4 span


def test_bias_is_protected_as_an_input_column():
    model0, strat0, xa = old_task("adam_nscl", bias=True)
    assert strat0.state.in_cov["a"].dim == DIMS["a"] + 1
    drift, moved = new_task_drift((model0, strat0, xa), "adam_nscl")
    assert drift < 1e-5 and moved > 0.1


@pytest.mark.parametrize("method", ["gpm", "adam_nscl"])
def test_state_round_trip(old, method, tmp_path):
    _, strat, _ = old[method]
    strat.save_state(tmp_path)
    fresh = get_strategy(method, strat.cfg)
    fresh.load_state(tmp_path, MultiHead(DIMS, EMBED))
    for m in ("a", "b"):
        p, q = strat.input_projector(m), fresh.input_projector(m)
        assert p.rank == q.rank == 4
        assert torch.allclose(p.matrix(), q.matrix())
    assert fresh.state.history == strat.state.history
    with pytest.raises(ValueError, match=r"subspace\.json.*'a'.*(12.*13|13.*12)"):
        fresh.load_state(tmp_path, MultiHead({**DIMS, "a": 13}, EMBED))


@pytest.mark.parametrize("method, opts, key", [
    ("gpm", {"placement": "after"}, "placement"),
    ("gpm", {"threshold": 1.5}, "threshold"),  # energy fractions lie in (0, 1]
    ("gpm", {"threshold_mode": "bogus"}, "threshold_mode"),
    ("gpm", {"tau": 1}, ""),
    ("adam_nscl", {"a": -1}, "a"),
    ("adam_nscl", {"threshold_mode": "min_ratio", "a": 0.5}, "a"),
])
def test_invalid_options_name_the_key(method, opts, key):
    with pytest.raises(ValueError, match=rf"methods\.{method}\.?{key}"):
        get_strategy(method, cfg(method, **opts))


def test_registered_with_description_and_citation():
    for method in ("gpm", "adam_nscl"):
        s = get_strategy(method, {})
        assert s.description and s.citation and s.name == method
    assert get_strategy("gpm", {}).opts == {"placement": "gradient", "threshold_mode": "energy",
                                            "threshold": 0.97}
    assert get_strategy("adam_nscl", {}).opts == {"placement": "update",
                                                  "threshold_mode": "relative", "a": 1e-3}


@pytest.mark.parametrize("bias", [False, True])
def test_gpm_factored_gradients_equal_the_dense_projection(monkeypatch, bias):
    """GPM's gradient placement projects Δᵀ [X | 1] through its factors (bias included, the
    clipping factor recovered): at every step, the gradient the dense projection gives."""
    run = old_task("gpm", bias=bias, **GPM_SPAN)
    project, errors = FactoredGradients.project_, []

    def checked(self, m, p_out, p_in):
        head = self.heads[m]
        g = NullSpaceProjection._joined(head, grad=True).clone()
        assert project(self, m, p_out, p_in)
        got, want = NullSpaceProjection._joined(head, grad=True), null_space_update(g, p_out, p_in)
        errors.append(((got - want).abs().max() / g.abs().max()).item())
        return True

    monkeypatch.setattr(FactoredGradients, "project_", checked)
    fast, _, _ = new_task(run, "gpm", train={"grad_clip": 1e-3}, **GPM_SPAN)
    assert len(errors) == 64 and max(errors) < 1e-5  # head a, 8 epochs x 8 batches
    if bias:
        # bias gradients are ~1e-11 rounding that AdamW's eps=1e-8 amplifies: steps, not weights
        return
    monkeypatch.setattr(FactoredGradients, "usable", staticmethod(lambda: False))
    slow, _, _ = new_task(run, "gpm", train={"grad_clip": 1e-3}, **GPM_SPAN)
    assert len(errors) == 64
    tc = cfg("gpm")["train"]
    for name, p in fast.named_parameters():  # equal in exact arithmetic: reordered float32 sums
        w = dict(slow.named_parameters())[name]
        torch.testing.assert_close(p, w, rtol=0, atol=weight_atol(w, 64, tc["lr"],
                                                                    tc["batch_size"]))


@pytest.mark.parametrize("method", ["gpm", "adam_nscl"])
def test_rotated_placement_keeps_old_outputs(old, method):
    """Opt-in: AdamW in the eigenbasis of P_in with the protected columns frozen. Another
    optimizer than the update placement (different weights), the same invariant."""
    opts = GPM_SPAN if method == "gpm" else {}
    rot, drift, moved = new_task(old[method], method, placement="rotated", **opts)
    upd, _, _ = new_task(old[method], method, placement="update", **opts)
    assert drift < 1e-5 and moved > 0.1
    assert (rot.heads["a"].weight - upd.heads["a"].weight).abs().max() > 1e-3
    assert not rot.heads["a"]._forward_pre_hooks


@pytest.mark.parametrize("method", ["gpm", "adam_nscl"])
def test_rotated_inputs_once_per_task_equal_the_per_batch_hooks(old, monkeypatch, method):
    """Head a's features are rotated once per task (no input hook while training; c has no
    past) and the weights end where per-batch hook rotation ended, to float rounding."""
    opts = GPM_SPAN if method == "gpm" else {}
    calls, real = [], RotatedHeads.rotate_inputs

    def rotate(self, modality, x, rows=65536):
        y = real(self, modality, x, rows)
        hooked = modality in self.heads and bool(self.heads[modality]._forward_pre_hooks)
        calls.append((modality, y is not x, hooked))
        return y

    monkeypatch.setattr(RotatedHeads, "rotate_inputs", rotate)
    once, drift, moved = new_task(old[method], method, placement="rotated", **opts)
    assert calls == [("a", True, False), ("c", False, False)]
    assert drift < 1e-5 and moved > 0.1
    monkeypatch.setattr(NullSpaceProjection, "per_task_inputs", False)
    hooked, _, _ = new_task(old[method], method, placement="rotated", **opts)
    assert len(calls) == 2
    tc = cfg(method)["train"]
    for m in ("a", "c"):  # equal in exact arithmetic: bounded by the reordered float32 sums
        w = hooked.heads[m].weight
        torch.testing.assert_close(once.heads[m].weight, w, rtol=0, atol=weight_atol(
            w, 64, tc["lr"], tc["batch_size"]))  # 8 epochs x 8 batches


def test_rotated_placement_refuses_heads_with_a_bias():
    strat = get_strategy("adam_nscl", cfg("adam_nscl", placement="rotated"))
    with pytest.raises(ValueError, match=r"methods\.adam_nscl\.placement.*bias"):
        strat.load_state(None, MultiHead(DIMS, EMBED, bias=True))
