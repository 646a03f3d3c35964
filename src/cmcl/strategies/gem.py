"""GEM and A-GEM: keep the loss on past tasks' episodic memories from rising.

Both project the gradient in `before_optimizer_step` (after clipping, before AdamW). Reference
gradients are taken on the memories w.r.t. exactly the parameters that hold a gradient (the
current task's heads); a past task whose heads are all frozen now gives no constraint.

GEM (Lopez-Paz & Ranzato 2017): if g conflicts with any past task's gradient g_k, solve the
dual QP  min_{v >= margin} ½‖Gᵀv + g‖²  and use g̃ = g + Gᵀv, which has G g̃ >= 0. Written this
way the dual is a non-negative least-squares problem; a thin QR of Gᵀ shrinks it to t x t
(t = past tasks) for scipy's NNLS, with no ε added to GGᵀ as the authors' quadprog code needs.
A-GEM (Chaudhry et al. 2019): one reference gradient g_ref on a batch drawn from all memories;
if g·g_ref < 0, g <- g - (g·g_ref / ‖g_ref‖²) g_ref.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy.optimize import nnls

from cmcl.models import MultiHead
from cmcl.settings import StepConfig
from cmcl.strategies import LR, Strategy, TaskContext, choice, register
from cmcl.strategies.helpers.replay import EpisodicMemory, ReplayBatch, replay_loss, step_generator


def gem_project(g: torch.Tensor, mem: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """g (p,) projected so that mem (t, p) @ g̃ >= 0; g itself when nothing conflicts."""
    mem = mem[mem.norm(dim=1) > 0]
    if len(mem) == 0 or bool((mem @ g >= 0).all()):
        return g
    gd, md = g.double(), mem.double()
    h = torch.full((len(md),), float(margin), dtype=torch.float64)
    c = gd + md.T @ h
    q, r = torch.linalg.qr(md.T)  # md.T = q r, r is t x t
    w, _ = nnls(r.numpy(), -(q.T @ c).numpy())
    v = h + torch.from_numpy(np.asarray(w))
    return (gd + md.T @ v).to(g.dtype)


def agem_project(g: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    dot = g @ ref
    if dot >= 0 or ref.norm() == 0:
        return g
    return g - dot / (ref @ ref) * ref


class _Episodic(Strategy):
    """Memory handling and gradient plumbing shared by GEM and A-GEM."""

    salt = 404

    def __init__(self, cfg: StepConfig | dict) -> None:
        super().__init__(cfg)
        self.memory = EpisodicMemory(self.opts["memory_per_task"])
        self.gen = step_generator(self.salt)
        self.projected = 0

    def load_state(self, directory: Path | None, model: MultiHead) -> None:
        if directory is not None and (directory / "memory.json").exists():
            self.memory = EpisodicMemory.load(directory, "memory")
            self.memory.check_dims(model.in_dims, model.embed_dim, str(directory / "memory.json"))
            self.memory.per_task = self.opts["memory_per_task"]
        else:
            self.memory = EpisodicMemory(self.opts["memory_per_task"])

    def save_state(self, directory: Path) -> None:
        self.memory.save(directory, "memory")

    def before_task(self, ctx: TaskContext) -> None:
        self.gen = step_generator(self.salt)
        self.projected = 0

    def after_task(self, ctx: TaskContext) -> None:
        a, b = ctx.modalities
        self.memory.add_task(ctx.step, ctx.task, (a, b), ctx.train[a], ctx.train[b],
                             ctx.train["labels"], step_generator(self.salt + 1))
        ctx.extra[f"{self.name}_projected_steps"] = self.projected

    def memory_grad(self, ctx: TaskContext, params: list[torch.nn.Parameter],
                    batches: list[ReplayBatch]) -> torch.Tensor | None:
        """Flat gradient of the memory loss w.r.t. params (zeros for params it does not reach)."""
        with torch.enable_grad():
            loss = replay_loss(lambda m, x: self.embed(ctx.model, m, x), batches,
                               ctx.cfg.loss.nce(), set(ctx.modalities), ctx.device)
            if loss is None or not loss.requires_grad:
                return None
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                          for p, g in zip(params, grads, strict=True)])

    def references(self, ctx: TaskContext, params: list) -> torch.Tensor | None:
        raise NotImplementedError

    def project(self, g: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def before_optimizer_step(self, ctx: TaskContext) -> None:
        params = [p for m in ctx.modalities for p in ctx.model.heads[m].parameters()
                  if p.grad is not None]
        if not params or self.memory.size == 0:
            return
        refs = self.references(ctx, params)
        if refs is None:
            return
        g = torch.cat([p.grad.reshape(-1) for p in params])
        new = self.project(g, refs)
        if new is g:
            return
        self.projected += 1
        i = 0
        for p in params:
            p.grad.copy_(new[i: i + p.numel()].view_as(p.grad))
            i += p.numel()


MEMORY = {"memory_per_task": {"type": "integer", "minimum": 1, "default": 256}}


@register
class GEM(_Episodic):
    name = "gem"
    description = "gradient episodic memory: QP projection so no past task's loss increases"
    citation = "Lopez-Paz, Ranzato. Gradient Episodic Memory for Continual Learning. NeurIPS 2017"
    options = {"properties": {**MEMORY, "margin": {
        "type": "number", "minimum": 0, "default": 0.5,
        "description": "memory_strength of the authors' code: dual variables >= margin"}}}
    # the memory strength (the authors' grid: 0, 0.1, 0.5, 1); memory size is the budget
    space = {"margin": {"type": "float", "low": 0.0, "high": 1.0}, "train.lr": LR}
    budget = {"memory_per_task": "per_task"}

    def references(self, ctx: TaskContext, params: list) -> torch.Tensor | None:
        rows = [self.memory_grad(ctx, params, [rb]) for rb in self.memory.task_batches()]
        rows = [r for r in rows if r is not None]
        return torch.stack(rows) if rows else None

    def project(self, g: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
        return gem_project(g, refs, self.opts["margin"])


@register
class AGEM(_Episodic):
    name = "agem"
    description = "averaged GEM: project only against one averaged memory gradient"
    citation = "Chaudhry, Ranzato, Rohrbach, Elhoseiny. Efficient Lifelong Learning with A-GEM. " \
               "ICLR 2019"
    options = {"properties": {**MEMORY, "ref_batch_size": {
        "type": "integer", "minimum": 1, "default": 256}}}
    # the buffer policy: how many stored pairs form the reference gradient
    space = {"ref_batch_size": choice(64, 128, 256), "train.lr": LR}
    budget = {"memory_per_task": "per_task"}

    def references(self, ctx: TaskContext, params: list) -> torch.Tensor | None:
        batches = self.memory.sample(self.opts["ref_batch_size"], self.gen)
        return self.memory_grad(ctx, params, batches)

    def project(self, g: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
        return agem_project(g, refs)
