"""DNS: Dual-sided Null Space projection (Liu et al., "Continual Multimodal Contrastive Learning").

Each head update G of modality m is replaced by G − P_out G P_in, where P_in spans m's past
inputs and P_out the partner embeddings m was aligned to. For every old pair (x, z) inside both
subspaces zᵀ G' x = 0: old similarities do not move, while every direction outside *both*
subspaces stays free.

placement "exact" (default) projects the *actual* weight update after AdamW (moments, weight
decay and clipping included) and treats a bias as an extra input column, so the invariant holds
for the weights, not just for the gradient. It costs O(d²k) per head and step (the update is
dense, of full rank). placement "faithful" reproduces the authors' code: the clipped raw
gradient is projected before AdamW, the bias is left alone, and covariances follow the
authors' counting rule. Its gradient is Δᵀ X (rank <= batch), so it is projected through those thin
factors (subspace.FactoredGradients, O(B·d·k + B·d²)); the result equals projecting the dense
gradient to float rounding, and the dense path is taken whenever that cannot be vouched for
(several processes, a probe mismatch). With faithful_counts (its default) the covariances follow
the authors' running-mean rule (SubspaceState.covariance), and the partner-output covariance is
W Σ Wᵀ without the bias, as theirs; with train.preset `paper` (their Hugging Face Trainer's
linear decay, bias exempt from weight decay, last partial batch kept) this is their training.

placement "rotated" (opt-in, not the paper's) keeps the exact invariant at a fraction of the
cost: each head trains in the eigenbases of its projectors, W = R_out W̃ R_inᵀ, where the
projection of the update is "leave the protected k_out × k_in block of W̃ unchanged"
(subspace.RotatedHeads). The forward pass and clipping are unchanged, but AdamW's
per-coordinate moments live in the rotated coordinates, so the trajectory differs from
"exact". Bias-free heads only. The inputs are rotated once per task (`train_inputs`: the
features are frozen); only the partner's output, mapped into the pair's common frame, costs a
B×d² product per step.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cmcl.models import MultiHead
from cmcl.strategies import LR, Strategy, TaskContext, log_range, register
from cmcl.subspace import (
    THRESHOLD_MODES,
    FactoredGradients,
    Projector,
    RotatedHeads,
    SubspaceState,
    null_space_update_,
    threshold_rules,
)


def _augment(x: torch.Tensor, bias: bool) -> torch.Tensor:
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1) if bias else x


@register
class DNS(Strategy):
    name = "dns"
    description = "dual-sided null-space projection of head updates (input and partner sides)"
    citation = "Liu, Xia, Ng, Chua. Continual Multimodal Contrastive Learning. arXiv:2503.14963"

    options = {"properties": {
        "placement": {
            "enum": ["exact", "faithful", "rotated"], "default": "exact",
            "description": "exact: project the AdamW update of W (old similarities fixed); "
                           "faithful: project the clipped gradient (the authors' code); "
                           "rotated: AdamW on W in the projectors' eigenbases with the "
                           "protected block frozen (same invariant as exact, another "
                           "optimizer, much cheaper; bias-free heads only)"},
        "sides": {"enum": ["both", "input", "output"], "default": "both",
                  "description": "project on both sides (DNS) or one (ablation)"},
        "threshold_mode": {"enum": list(THRESHOLD_MODES), "default": "relative"},
        "threshold_in": {"type": "number", "minimum": 0, "default": 1e-3},
        "threshold_out": {"type": "number", "minimum": 0, "default": 1e-3},
        "faithful_counts": {"type": ["boolean", "null"], "default": None,
                            "description": "covariances by the authors' running-mean rule "
                                           "(null: when placement is faithful)"},
    }, "allOf": [*threshold_rules("threshold_in", {"sides": {"enum": ["both", "input"]}}),
                 *threshold_rules("threshold_out", {"sides": {"enum": ["both", "output"]}})]}

    # with no past there is nothing to project: the first task is plain training
    first_step_ignores = ("threshold_in", "threshold_out", "threshold_mode", "sides")
    # both sides' null-space thresholds (relative mode)
    space = {"threshold_in": log_range(1e-6, 0.3), "threshold_out": log_range(1e-6, 0.3),
             "train.lr": LR}
    # rotated: rotate the task's inputs once (train_inputs); False rotates every batch by a
    # forward hook instead (the reference the tests compare against)
    per_task_inputs: bool = True

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        p = self.opts
        self.placement, self.sides, self.mode = p["placement"], p["sides"], p["threshold_mode"]
        self.thr_in, self.thr_out = float(p["threshold_in"]), float(p["threshold_out"])
        fc = p["faithful_counts"]
        self.faithful_counts = self.placement == "faithful" if fc is None else bool(fc)
        self.proj: dict[str, tuple[Projector, Projector]] = {}
        self.snap: dict[str, torch.Tensor] = {}
        self.factored: FactoredGradients | None = None  # faithful: gradients through factors
        self.rotated: RotatedHeads | None = None
        self.paths = {"factored": 0, "dense": 0}  # faithful: projections taken by each path

    def task_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """In-task state for preemption checkpoints: only the path counters. Projectors, hooks
        and rotations are rebuilt by load_state + before_task (rotated weights come back with
        the model), and the covariances change only in after_task."""
        return {"paths": dict(self.paths)}, {}

    def load_task_state(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        self.paths = dict(meta["paths"])

    def _bias(self, model: MultiHead) -> bool:
        return model.config()["bias"] and self.placement == "exact"

    def load_state(self, directory: Path | None, model: MultiHead) -> None:
        if self.placement == "rotated" and model.config()["bias"]:
            raise ValueError("methods.dns.placement: 'rotated' needs bias-free heads "
                             "(model.bias is true); use 'exact'")
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
        heads = {m: ctx.model.heads[m] for m in self.proj}
        self.paths = {"factored": 0, "dense": 0}
        if self.placement == "faithful" and heads and FactoredGradients.usable():
            self.factored = FactoredGradients(heads, seed=ctx.step)
        if self.placement == "rotated":
            self.rotated = RotatedHeads(heads, self.proj, pair=ctx.modalities,
                                        input_hooks=not self.per_task_inputs)

    def train_inputs(self, ctx: TaskContext, modality: str, x: torch.Tensor) -> torch.Tensor:
        """Rotated placement: the task's features in the head's rotated input frame, once."""
        if self.rotated is None or not self.per_task_inputs:
            return x
        return self.rotated.rotate_inputs(modality, x)

    def embed(self, model: torch.nn.Module, modality: str, x: torch.Tensor) -> torch.Tensor:
        """While training rotated, the pair's embeddings in one common orthogonal frame: the
        contrastive loss sees only their inner products and norms (RotatedHeads `pair`)."""
        z = model(modality, x)
        return z if self.rotated is None else self.rotated.to_frame(modality, z)

    def _weight(self, head: torch.nn.Linear, aug: bool) -> torch.Tensor:
        return torch.cat([head.weight, head.bias[:, None]], 1) if aug else head.weight

    @torch.no_grad()
    def before_optimizer_step(self, ctx: TaskContext) -> None:
        if self.placement == "rotated":
            return
        aug = self._bias(ctx.model)
        for m, (p_out, p_in) in self.proj.items():
            head = ctx.model.heads[m]
            if self.placement == "exact":
                self.snap[m] = self._weight(head, aug).detach().clone()
            elif self.factored is not None and self.factored.project_(m, p_out, p_in):
                self.paths["factored"] += 1
            elif head.weight.grad is not None:
                null_space_update_(head.weight.grad, head.weight.grad, p_out, p_in)
                self.paths["dense"] += 1
        if self.factored is not None:
            self.factored.clear()

    @torch.no_grad()
    def after_optimizer_step(self, ctx: TaskContext) -> None:
        if self.rotated is not None:
            self.rotated.restore_()
        if self.placement != "exact":
            return
        aug = self._bias(ctx.model)
        for m, (p_out, p_in) in self.proj.items():
            head = ctx.model.heads[m]
            before = self.snap[m]
            if aug:
                new = self._weight(head, aug)
                null_space_update_(new, new - before, p_out, p_in)
                head.weight.copy_(new[:, : head.weight.shape[1]])
                head.bias.copy_(new[:, -1])
            else:  # W ← before + (ΔW − P_out ΔW P_in), i.e. W −= P_out ΔW P_in, in place
                null_space_update_(head.weight, head.weight - before, p_out, p_in)

    def _close(self, ctx: TaskContext) -> None:
        """Drop the hooks; rotated weights go back to the original coordinates."""
        if self.placement == "faithful":
            ctx.extra["dns_gradient_paths"] = dict(self.paths)
        if self.factored is not None:
            self.factored.close()
            self.factored = None
        if self.rotated is not None:
            self.rotated.close()
            self.rotated = None

    @torch.no_grad()
    def after_task(self, ctx: TaskContext) -> None:
        """Add this task's inputs and partner embeddings to the running covariances."""
        self._close(ctx)
        a, b = ctx.modalities
        aug = self._bias(ctx.model)
        n = len(ctx.train[a])
        bs = int(ctx.cfg.get("train", {}).get("batch_size", 64)) * 16
        # faithful: the authors' output covariance is W Σ Wᵀ, the bias left out
        out = ((lambda m, x: x @ ctx.model.heads[m].weight.T) if self.placement == "faithful"
               else ctx.model)
        for i in range(0, n, bs):
            xa, xb = ctx.train[a][i: i + bs], ctx.train[b][i: i + bs]
            za, zb = out(a, xa), out(b, xb)
            self.state.update_inputs(a, _augment(xa, aug))
            self.state.update_inputs(b, _augment(xb, aug))
            self.state.update_outputs(a, zb)
            self.state.update_outputs(b, za)
        self.state.end_task(ctx.step, ctx.task, [a, b], n)
