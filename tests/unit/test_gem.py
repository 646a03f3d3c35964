"""GEM and A-GEM: the projections satisfy the memory constraints, and the hooks project the
real head gradients."""

from __future__ import annotations

import pytest
import torch
from helpers.toy_latent import cfg, context, fresh, new_model

from cmcl.strategies.gem import agem_project, gem_project

pytestmark = pytest.mark.usefixtures("one_thread")


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
