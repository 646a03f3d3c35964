"""DNS: Dual-sided Null Space projection (Liu et al., "Continual Multimodal Contrastive Learning").

Each head update G of modality m is replaced by G − P_out G P_in, where P_in spans m's past
inputs and P_out the partner embeddings m was aligned to. For every old pair (x, z) inside both
subspaces zᵀ G' x = 0: old similarities do not move, while every direction outside *both*
subspaces stays free.

placement "exact" (default) projects the *actual* weight update after AdamW (moments, weight
decay and clipping included) and treats a bias as an extra input column, so the invariant holds
for the weights, not just for the gradient. placement "faithful" reproduces the authors' code:
the clipped raw gradient is projected before AdamW, the bias is left alone, and covariances use
one global sample count.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cmcl.models import MultiHead
from cmcl.strategies import Strategy, TaskContext, register
from cmcl.subspace import THRESHOLD_MODES, Projector, SubspaceState, null_space_update


def _augment(x: torch.Tensor, bias: bool) -> torch.Tensor:
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1) if bias else x


@register
class DNS(Strategy):
    name = "dns"
    description = "dual-sided null-space projection of head updates (input and partner sides)"
    citation = "Liu, Xia, Ng, Chua. Continual Multimodal Contrastive Learning. arXiv:2503.14963"

    options = {"properties": {
        "placement": {"enum": ["exact", "faithful"], "default": "exact"},
        "sides": {"enum": ["both", "input", "output"], "default": "both"},
        "threshold_mode": {"enum": list(THRESHOLD_MODES), "default": "relative"},
        "threshold_in": {"type": "number", "minimum": 0, "default": 1e-3},
        "threshold_out": {"type": "number", "minimum": 0, "default": 1e-3},
        "faithful_counts": {"type": ["boolean", "null"], "default": None},
    }}

    # with no past there is nothing to project: the first task is plain training
    first_step_ignores = ("threshold_in", "threshold_out", "threshold_mode", "sides")

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        p = self.opts
        self.placement, self.sides, self.mode = p["placement"], p["sides"], p["threshold_mode"]
        self.thr_in, self.thr_out = float(p["threshold_in"]), float(p["threshold_out"])
        fc = p["faithful_counts"]
        self.faithful_counts = self.placement == "faithful" if fc is None else bool(fc)
        self.proj: dict[str, tuple[Projector, Projector]] = {}
        self.snap: dict[str, torch.Tensor] = {}

    def _bias(self, model: MultiHead) -> bool:
        return model.config()["bias"] and self.placement == "exact"

    def load_state(self, directory: Path | None, model: MultiHead) -> None:
        aug = int(self._bias(model))
        in_dims = {m: d + aug for m, d in model.in_dims.items()}
        if directory is not None and (directory / "subspace.json").exists():
            self.state = SubspaceState.load(directory, in_dims, model.embed_dim)
        else:
            self.state = SubspaceState(in_dims, model.embed_dim, self.faithful_counts)

    def save_state(self, directory: Path) -> None:
        self.state.save(directory)

    def projectors(self, modality: str) -> tuple[Projector, Projector] | None:
        """(P_out, P_in) for a head, from the saved covariances; None if it has no past."""
        st = self.state
        if not st.seen(modality, "in"):
            return None
        d_in, d_out = st.in_cov[modality].dim, st.out_cov[modality].dim
        use_in = self.sides in ("both", "input")
        use_out = self.sides in ("both", "output") and st.seen(modality, "out")
        p_in = (st.projector(modality, "in", self.mode, self.thr_in) if use_in
                else Projector.identity(d_in))
        p_out = (st.projector(modality, "out", self.mode, self.thr_out) if use_out
                 else Projector.identity(d_out))
        return p_out, p_in

    def before_task(self, ctx: TaskContext) -> None:
        w = ctx.model.heads[ctx.modalities[0]].weight
        self.proj = {}
        for m in ctx.modalities:
            pr = self.projectors(m)
            if pr is not None:
                self.proj[m] = (pr[0].to(w.device, w.dtype), pr[1].to(w.device, w.dtype))
        ctx.extra["dns_ranks"] = {m: {"out": po.rank, "in": pi.rank}
                                  for m, (po, pi) in self.proj.items()}

    def _weight(self, head: torch.nn.Linear, aug: bool) -> torch.Tensor:
        return torch.cat([head.weight, head.bias[:, None]], 1) if aug else head.weight

    def before_optimizer_step(self, ctx: TaskContext) -> None:
        aug = self._bias(ctx.model)
        for m, (p_out, p_in) in self.proj.items():
            head = ctx.model.heads[m]
            if self.placement == "faithful":
                if head.weight.grad is not None:
                    head.weight.grad.copy_(null_space_update(head.weight.grad, p_out, p_in))
            else:
                self.snap[m] = self._weight(head, aug).detach().clone()

    @torch.no_grad()
    def after_optimizer_step(self, ctx: TaskContext) -> None:
        if self.placement == "faithful":
            return
        aug = self._bias(ctx.model)
        for m, (p_out, p_in) in self.proj.items():
            head = ctx.model.heads[m]
            before = self.snap[m]
            new = before + null_space_update(self._weight(head, aug) - before, p_out, p_in)
            head.weight.copy_(new[:, : head.weight.shape[1]])
            if aug:
                head.bias.copy_(new[:, -1])

    @torch.no_grad()
    def after_task(self, ctx: TaskContext) -> None:
        """Add this task's inputs and partner embeddings to the running covariances."""
        a, b = ctx.modalities
        aug = self._bias(ctx.model)
        n = len(ctx.train[a])
        bs = int(ctx.cfg.get("train", {}).get("batch_size", 64)) * 16
        for i in range(0, n, bs):
            xa, xb = ctx.train[a][i: i + bs], ctx.train[b][i: i + bs]
            za, zb = ctx.model(a, xa), ctx.model(b, xb)
            self.state.update_inputs(a, _augment(xa, aug))
            self.state.update_inputs(b, _augment(xb, aug))
            self.state.update_outputs(a, zb)
            self.state.update_outputs(b, za)
        self.state.end_task(ctx.step, ctx.task, [a, b], n)
