"""GPM: Gradient Projection Memory (Saha, Garg, Roy, ICLR 2021), adapted to linear heads.

GPM protects a layer by keeping a basis M of the inputs it saw on past tasks and removing the
component of each new gradient that acts on that span: G ← G − G M Mᵀ. For an old input x in
span(M), G' x = G x − G M Mᵀ x = 0, so old outputs W x do not move — whatever the output side
(unlike DNS, nothing is kept on the output side, so less freedom is left for new tasks).

Choices made here, and why:
- The basis is re-derived from the pooled uncentered input covariance of all past tasks of the
  modality (SubspaceState, input side only) with GPM's kept-energy rule: the fewest leading
  eigenvectors holding a fraction ε of the energy (`threshold_mode: energy`, ε = 0.97, inside
  the paper's 0.95–0.99). GPM itself grows M task by task, adding residual directions until ε
  of *that task's* energy is covered, so a small task weighs as much as a big one; pooling
  weighs tasks by their pair counts instead, but keeps covariances (not bases) on disk so ε
  can be swept without retraining, as for DNS.
- `placement: gradient` (default) is GPM's own: the clipped raw gradient is projected before
  the optimizer. GPM was designed for SGD, where that is enough; under AdamW the per-coordinate
  scaling and the weight decay move weights out of the allowed subspace, so old outputs drift.
  `placement: update` projects the actual weight update after AdamW instead (like DNS exact and
  Adam-NSCL), which keeps W x_old fixed for inputs in the kept span.
  `placement: rotated` (opt-in) keeps the update placement's invariant far more cheaply:
  each head trains in the eigenbasis of P_in, where the projection is "leave the protected
  columns of W̃ = W R_in unchanged" (subspace.RotatedHeads); AdamW's per-coordinate moments
  then live in rotated coordinates, so it is another optimizer. Bias-free heads only. The
  task's inputs are rotated once (`train_inputs`), so a step costs what fine-tuning costs plus
  a slice copy.
- A head's bias is treated as one more input column fed a constant 1 (its covariance row is
  the input mean), so the bias is protected with the weights under the gradient and update
  placements.
- Cost: the gradient placement projects the batch gradient Δᵀ X through its thin factors
  (subspace.FactoredGradients, equal to the dense projection to float rounding); the update
  placement projects the dense AdamW update, O(d²k) per head and step.

`InputProjection` holds the machinery shared with Adam-NSCL (cmcl.strategies.adam_nscl), which
differs only in how the protected subspace is chosen and in always projecting the update.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cmcl.models import MultiHead
from cmcl.strategies import LR, Strategy, TaskContext, register
from cmcl.subspace import (
    THRESHOLD_MODES,
    FactoredGradients,
    Projector,
    RotatedHeads,
    SubspaceState,
    null_space_update_,
    threshold_rules,
)


class InputProjection(Strategy):
    """One-sided projection ΔW ← ΔW − ΔW P_in, P_in spanning the head's past inputs.

    Subclasses choose P_in (`input_projector`) and where the projection acts (`placement`:
    gradient, update or rotated, see the module docstring). The state is a SubspaceState with
    an empty (0-dim) output side: nothing of the partner embeddings is needed, and saving empty
    d×d output covariances would waste disk.
    """

    placement: str = "update"
    threshold_key: str = "threshold"  # the option `resolve_options` checks against the mode
    # rotated: rotate the task's inputs once (train_inputs); False rotates every batch by a
    # forward hook instead (the reference the tests compare against)
    per_task_inputs: bool = True

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        self.proj: dict[str, tuple[Projector, Projector]] = {}  # m -> (identity out, P_in)
        self.snap: dict[str, torch.Tensor] = {}
        self.state: SubspaceState | None = None
        self.factored: FactoredGradients | None = None
        self.rotated: RotatedHeads | None = None

    def task_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """In-task state for preemption checkpoints: none. Projectors, hooks and rotations are
        rebuilt by load_state + before_task (rotated weights come back with the model), and
        the covariances change only in after_task."""
        return {}, {}

    def load_task_state(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Nothing to restore (see task_state)."""

    @staticmethod
    def _bias(model: MultiHead) -> bool:
        return bool(model.config()["bias"])

    def load_state(self, directory: Path | None, model: MultiHead) -> None:
        if self.placement == "rotated" and self._bias(model):
            raise ValueError(f"methods.{self.name}.placement: 'rotated' needs bias-free heads "
                             "(model.bias is true); use 'update'")
        aug = int(self._bias(model))
        in_dims = {m: d + aug for m, d in model.in_dims.items()}
        if directory is not None and (directory / "subspace.json").exists():
            self.state = SubspaceState.load(directory, in_dims)
        else:
            self.state = SubspaceState(in_dims, 0)

    def save_state(self, directory: Path) -> None:
        self._require_state().save(directory)

    def _require_state(self) -> SubspaceState:
        if self.state is None:
            raise RuntimeError(f"{self.name}: load_state must run before training")
        return self.state

    def input_projector(self, modality: str) -> Projector:
        """Projector onto the protected span of the modality's past inputs."""
        raise NotImplementedError

    def before_task(self, ctx: TaskContext) -> None:
        """Derive P_in once per task (never per step) and move it to the weights' device."""
        st = self._require_state()
        self.proj = {}
        for m in ctx.modalities:
            if st.seen(m, "in"):
                w = ctx.model.heads[m].weight
                p_in = self.input_projector(m).to(w.device, w.dtype)
                self.proj[m] = (Projector.identity(w.shape[0]), p_in)
        ctx.extra[f"{self.name}_ranks"] = {m: p.rank for m, (_, p) in self.proj.items()}
        heads = {m: ctx.model.heads[m] for m in self.proj}
        if self.placement == "gradient" and heads and FactoredGradients.usable():
            self.factored = FactoredGradients(heads, bias_column=True, seed=ctx.step)
        if self.placement == "rotated":
            self.rotated = RotatedHeads(heads, self.proj, input_hooks=not self.per_task_inputs)

    def train_inputs(self, ctx: TaskContext, modality: str, x: torch.Tensor) -> torch.Tensor:
        """Rotated placement: the task's features in the head's eigenbasis of P_in, once per
        task; no per-batch rotation is left (the output side is never rotated here)."""
        if self.rotated is None or not self.per_task_inputs:
            return x
        return self.rotated.rotate_inputs(modality, x)

    @staticmethod
    def _joined(head: torch.nn.Linear, grad: bool) -> torch.Tensor | None:
        """[W | b] (or its gradient): the bias as the weight of a constant input 1."""
        w = head.weight.grad if grad else head.weight
        if w is None:
            return None
        if head.bias is None:
            return w
        b = head.bias.grad if grad else head.bias
        b = torch.zeros_like(head.bias) if b is None else b
        return torch.cat([w, b[:, None]], 1)

    @staticmethod
    def _split_into(head: torch.nn.Linear, value: torch.Tensor, grad: bool) -> None:
        d = head.weight.shape[1]
        (head.weight.grad if grad else head.weight).copy_(value[:, :d])
        if head.bias is not None:
            if grad and head.bias.grad is None:
                head.bias.grad = torch.zeros_like(head.bias)
            (head.bias.grad if grad else head.bias).copy_(value[:, d])

    @torch.no_grad()
    def before_optimizer_step(self, ctx: TaskContext) -> None:
        if self.placement == "rotated":
            return
        for m, (p_out, p_in) in self.proj.items():
            head = ctx.model.heads[m]
            if self.placement == "update":
                self.snap[m] = self._joined(head, grad=False).detach().clone()
            elif self.factored is None or not self.factored.project_(m, p_out, p_in):
                g = self._joined(head, grad=True)
                if g is not None:
                    self._split_into(head, null_space_update_(g, g, p_out, p_in), grad=True)
        if self.factored is not None:
            self.factored.clear()

    @torch.no_grad()
    def after_optimizer_step(self, ctx: TaskContext) -> None:
        if self.rotated is not None:
            self.rotated.restore_()
        if self.placement != "update":
            return
        for m, (p_out, p_in) in self.proj.items():
            head, before = ctx.model.heads[m], self.snap[m]
            if head.bias is None:  # W −= P_out ΔW P_in, in place
                null_space_update_(head.weight, head.weight - before, p_out, p_in)
                continue
            new = self._joined(head, grad=False)
            self._split_into(head, null_space_update_(new, new - before, p_out, p_in),
                             grad=False)

    def _close(self) -> None:
        """Drop the hooks; rotated weights go back to the original coordinates."""
        if self.factored is not None:
            self.factored.close()
            self.factored = None
        if self.rotated is not None:
            self.rotated.close()
            self.rotated = None

    @torch.no_grad()
    def after_task(self, ctx: TaskContext) -> None:
        """Add this task's inputs of both modalities to their running covariances."""
        self._close()
        st = self._require_state()
        a, b = ctx.modalities
        aug = self._bias(ctx.model)
        bs = int(ctx.cfg.get("train", {}).get("batch_size", 64)) * 16
        for m in (a, b):
            x = ctx.train[m]
            for i in range(0, len(x), bs):
                xb = x[i: i + bs]
                if aug:
                    xb = torch.cat([xb, torch.ones(len(xb), 1, dtype=xb.dtype,
                                                   device=xb.device)], 1)
                st.update_inputs(m, xb)
        st.end_task(ctx.step, ctx.task, [a, b], len(ctx.train[a]))


@register
class GPM(InputProjection):
    name = "gpm"
    description = "gradient projection memory: input-side projection onto the complement of " \
                  "the past inputs' kept-energy span"
    citation = ("Saha, Garg, Roy. Gradient Projection Memory for Continual Learning. "
                "ICLR 2021")
    options = {"properties": {
        "placement": {"enum": ["gradient", "update", "rotated"], "default": "gradient",
                      "description": "gradient: project the clipped gradient (GPM's own); "
                                     "update: project the AdamW update (old outputs fixed); "
                                     "rotated: AdamW in the eigenbasis of P_in with the "
                                     "protected columns frozen (same invariant as update, "
                                     "another optimizer, cheaper; bias-free heads only)"},
        "threshold_mode": {"enum": list(THRESHOLD_MODES), "default": "energy"},
        "threshold": {"type": "number", "minimum": 0, "default": 0.97},
    }, "allOf": threshold_rules("threshold")}
    # the kept-energy threshold (GPM tunes it per layer, 0.97-0.99+; one value here)
    space = {"threshold": {"type": "float", "low": 0.5, "high": 0.9999}, "train.lr": LR}

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        self.placement = self.opts["placement"]
        self.mode, self.threshold = self.opts["threshold_mode"], float(self.opts["threshold"])

    def input_projector(self, modality: str) -> Projector:
        return self._require_state().projector(modality, "in", self.mode, self.threshold)
