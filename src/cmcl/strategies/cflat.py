"""C-Flat: flatness-aware optimisation for continual learning (Bian et al.).

C-Flat minimises L(w) + R⁰_ρ(w) + λ·R¹_ρ(w): the zeroth-order sharpness
R⁰ = max_{‖ε‖≤ρ} L(w+ε) − L(w) (SAM) and the first-order flatness R¹ = ρ·max_{‖ε‖≤ρ}‖∇L(w+ε)‖
(GAM). Flat minima move less when later tasks perturb the weights. The gradient follows the
authors' optimizer, four gradients per step, with g(w) = ∇L(w):

    g0 = g(w)                      e0 = ρ g0/‖g0‖       g1 = g(w + e0)          (SAM)
    h  = g1 − g0                   e1 = ρ h/‖h‖         g2 = g(w + e1)
    e2 = e1 + ρ g2/‖g2‖            g3 = g(w + e2)
    applied gradient = g1 + λ (g3 − g2)

h ≈ ρ·H g0/‖g0‖ is the direction that increases the gradient norm, and g3 − g2 the finite-
difference gradient of ρ‖∇L‖ at the point reached along it. λ = 0 gives SAM exactly.

In this loop the method runs in `before_optimizer_step`: the loop's backward gives g0, the
hook recomputes the loss with `ctx.loss_fn(ctx.batch)` at the perturbed weights (the full
training loss, other strategies' terms included), replaces `.grad` of the task's heads, and
copies the saved weights back (bitwise; the authors subtract the perturbations, which is not
exact in floating point). The loop clips g0 before the hook: its direction is unchanged, but
h needs the raw g0, so when clipping was active and λ > 0 the hook recomputes g0 (one extra
pass). The final gradient is clipped with the same `train.grad_clip`, so the optimizer sees
gradients of the scale it sees without C-Flat.
"""

from __future__ import annotations

import torch

from cmcl.strategies import LR, Strategy, TaskContext, log_range, register

EPS = 1e-12


def _norm(gs: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in gs]))


def _scaled(gs: list[torch.Tensor], rho: float) -> list[torch.Tensor]:
    s = rho / (_norm(gs) + EPS)
    return [g * s for g in gs]


@register
class CFlat(Strategy):
    name = "cflat"
    description = "C-Flat: SAM step plus first-order flatness (gradient-norm) term"
    citation = "Bian et al. Make Continual Learning Stronger via C-Flat. NeurIPS 2024"
    options = {"properties": {
        "rho": {"type": "number", "minimum": 0, "default": 0.2,
                "description": "radius of both perturbations"},
        "lambda": {"type": "number", "minimum": 0, "default": 0.2,
                   "description": "weight of the first-order flatness term (0: SAM)"},
    }}
    # C-Flat's perturbation radius ρ and flatness weight λ
    space = {"rho": log_range(0.01, 1.0), "lambda": {"type": "float", "low": 0.0, "high": 1.0},
             "train.lr": LR}

    def params(self, ctx: TaskContext) -> list[torch.nn.Parameter]:
        """The task's head parameters that hold a gradient (those the optimizer steps)."""
        return [p for m in ctx.modalities for p in ctx.model.heads[m].parameters()
                if p.grad is not None]

    def grad_at(self, ctx: TaskContext, params: list[torch.nn.Parameter],
                w0: list[torch.Tensor], eps: list[torch.Tensor] | None) -> list[torch.Tensor]:
        """∇L at w0 + eps (w0 if eps is None), by a fresh forward/backward of the batch."""
        with torch.no_grad():
            for p, w, e in zip(params, w0, eps or [None] * len(params), strict=True):
                p.copy_(w if e is None else w + e)
        for p in params:
            p.grad = None
        with torch.enable_grad():
            ctx.loss_fn(ctx.batch).backward()
        return [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
                for p in params]

    def before_optimizer_step(self, ctx: TaskContext) -> None:
        rho, lam = float(self.opts["rho"]), float(self.opts["lambda"])
        if ctx.loss_fn is None or ctx.batch is None or rho == 0:
            return
        params = self.params(ctx)
        if not params:
            return
        w0 = [p.detach().clone() for p in params]
        g0 = [p.grad.detach().clone() for p in params]
        clip = ctx.cfg.train.grad_clip
        if clip and lam > 0 and float(_norm(g0)) >= float(clip) * (1 - 1e-4):
            g0 = self.grad_at(ctx, params, w0, None)  # clipped: h needs the raw gradient
        g1 = self.grad_at(ctx, params, w0, _scaled(g0, rho))
        final = g1
        if lam > 0:
            e1 = _scaled([a - b for a, b in zip(g1, g0, strict=True)], rho)
            g2 = self.grad_at(ctx, params, w0, e1)
            e2 = [a + b for a, b in zip(e1, _scaled(g2, rho), strict=True)]
            g3 = self.grad_at(ctx, params, w0, e2)
            final = [a + lam * (c - b) for a, b, c in zip(g1, g2, g3, strict=True)]
        with torch.no_grad():
            for p, w, g in zip(params, w0, final, strict=True):
                p.copy_(w)
                p.grad = g
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
