"""C-Flat: the SAM and flatness gradients on a quadratic loss, and the weights restored."""

from __future__ import annotations

import pytest
import torch
from helpers.toy_classes import DIMS, EMBED, cfg, new_model

from cmcl.strategies import TaskContext, get_strategy

pytestmark = pytest.mark.usefixtures("one_thread")


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
