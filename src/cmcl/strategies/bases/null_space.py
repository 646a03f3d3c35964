"""The null-space projection base of DNS, GPM and Adam-NSCL: ΔW ← ΔW − P_out ΔW P_in per head.

P_in spans a head's past inputs and P_out the partner embeddings it was aligned to (the
identity for one-sided methods, which keep no output side). Both come from the uncentered
covariances of a cmcl.subspace.SubspaceState, once per task, never per step. What the three
methods share lives here:
- the state's bookkeeping: load and save (subspace.json + subspace.safetensors), and folding a
  finished task's pairs into the running covariances (`after_task`);
- the threshold → rank rule, one call into cmcl.subspace (`side_projector`);
- the three placements of the projection, named by each method through `PLACEMENTS`:
  `update` projects the optimizer's actual update (snapshot before the step, project the
  difference after), `gradient` the clipped gradient before the optimizer (through the thin
  factors of subspace.FactoredGradients when it can vouch for them, else dense), `rotated`
  trains each head in its projectors' eigenbases with the protected block frozen
  (subspace.RotatedHeads, inputs rotated once per task by `train_inputs`);
- a head's bias as one more input column fed a constant 1 (`bias_column`).
A method declares its options, chooses its projectors (`input_projector`, and
`output_projector` when `output_side`), and overrides what is its own.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cmcl.models import MultiHead
from cmcl.settings import StepConfig
from cmcl.strategies import Strategy, TaskContext
from cmcl.subspace import (
    FactoredGradients,
    Projector,
    RotatedHeads,
    SubspaceState,
    null_space_update_,
)


def with_ones(x: torch.Tensor, bias: bool) -> torch.Tensor:
    """[x | 1] when the bias is a protected input column, else x."""
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1) if bias else x


class NullSpaceProjection(Strategy):
    """Per-head null-space projection of updates or gradients; see the module docstring."""

    # the method's placement names -> the base's three (update, gradient, rotated)
    PLACEMENTS: dict[str, str] = {"update": "update", "gradient": "gradient",
                                  "rotated": "rotated"}
    # True: also keep the partner embeddings' covariances and project on the output side (DNS)
    output_side: bool = False
    # project a head's bias with its weights, as the weight of an input fed a constant 1
    bias_column: bool = True
    faithful_counts: bool = False  # a new state's counting rule (SubspaceState)
    # rotated: rotate the task's inputs once (train_inputs); False rotates every batch by a
    # forward hook instead (the reference the tests compare against)
    per_task_inputs: bool = True

    def __init__(self, cfg: StepConfig | dict) -> None:
        super().__init__(cfg)
        self.placement, self.mode = self.opts["placement"], self.opts["threshold_mode"]
        self.proj: dict[str, tuple[Projector, Projector]] = {}  # m -> (P_out, P_in)
        self.snap: dict[str, torch.Tensor] = {}  # update placement: [W | b] before the step
        self.state: SubspaceState | None = None
        self.factored: FactoredGradients | None = None
        self.rotated: RotatedHeads | None = None

    @property
    def where(self) -> str:
        """The placement in the base's terms: update, gradient or rotated."""
        return self.PLACEMENTS[self.placement]

    def task_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """In-task state for preemption checkpoints: none. Projectors, hooks and rotations are
        rebuilt by load_state + before_task (rotated weights come back with the model), and
        the covariances change only in after_task."""
        return {}, {}

    def load_task_state(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Nothing to restore (see task_state)."""

    # -- the subspace state carried from step to step -----------------------------------------
    def _bias(self, model: MultiHead) -> bool:
        return bool(model.config()["bias"]) and self.bias_column

    def load_state(self, directory: Path | None, model: MultiHead) -> None:
        if self.where == "rotated" and model.config()["bias"]:
            update = next(k for k, v in self.PLACEMENTS.items() if v == "update")
            raise ValueError(f"methods.{self.name}.placement: 'rotated' needs bias-free heads "
                             f"(model.bias is true); use '{update}'")
        aug = int(self._bias(model))
        in_dims = {m: d + aug for m, d in model.in_dims.items()}
        if directory is not None and (directory / "subspace.json").exists():
            # a one-sided method never reads the output side: its saved dim is not checked
            out_dim = model.embed_dim if self.output_side else None
            self.state = SubspaceState.load(directory, in_dims, out_dim)
        else:  # one-sided: a 0-dim output side, as empty d×d covariances would waste disk
            out = model.embed_dim if self.output_side else 0
            self.state = SubspaceState(in_dims, out, self.faithful_counts)

    def save_state(self, directory: Path) -> None:
        self._require_state().save(directory)

    def _require_state(self) -> SubspaceState:
        if self.state is None:
            raise RuntimeError(f"{self.name}: load_state must run before training")
        return self.state

    # -- projectors -----------------------------------------------------------------------------
    def side_projector(self, modality: str, side: str, threshold: float) -> Projector:
        """Projector onto one side's protected span, by cmcl.subspace's threshold → rank rule."""
        return self._require_state().projector(modality, side, self.mode, threshold)

    def input_projector(self, modality: str) -> Projector:
        """Projector onto the protected span of the modality's past inputs."""
        raise NotImplementedError

    def output_projector(self, modality: str) -> Projector | None:
        """Projector onto the protected span of its past partner embeddings (None: one-sided,
        the identity of the head's output dim)."""
        return None

    def projectors(self, modality: str) -> tuple[Projector | None, Projector] | None:
        """(P_out, P_in) of a head from the saved covariances; None if it has no past."""
        if not self._require_state().seen(modality, "in"):
            return None
        return self.output_projector(modality), self.input_projector(modality)

    def before_task(self, ctx: TaskContext) -> None:
        """Derive the projectors once per task (never per step), on the weights' device."""
        self.proj = {}
        for m in ctx.modalities:
            pr = self.projectors(m)
            if pr is not None:
                w = ctx.model.heads[m].weight
                p_out = Projector.identity(w.shape[0]) if pr[0] is None else pr[0]
                self.proj[m] = (p_out.to(w.device, w.dtype), pr[1].to(w.device, w.dtype))
        ctx.extra[f"{self.name}_ranks"] = {
            m: {"out": po.rank, "in": pi.rank} if self.output_side else pi.rank
            for m, (po, pi) in self.proj.items()}
        heads = {m: ctx.model.heads[m] for m in self.proj}
        if self.where == "gradient" and heads and FactoredGradients.usable():
            self.factored = FactoredGradients(heads, bias_column=self.bias_column,
                                              seed=ctx.step)
        if self.where == "rotated":
            # the contrastive loss sees only inner products: the pair can share one frame
            pair = ctx.modalities if self.output_side else None
            self.rotated = RotatedHeads(heads, self.proj, pair=pair,
                                        input_hooks=not self.per_task_inputs)

    def train_inputs(self, ctx: TaskContext, modality: str, x: torch.Tensor) -> torch.Tensor:
        """Rotated placement: the task's features in the head's rotated input frame, once per
        task (features are frozen), so no per-batch input rotation is left."""
        if self.rotated is None or not self.per_task_inputs:
            return x
        return self.rotated.rotate_inputs(modality, x)

    def embed(self, model: torch.nn.Module, modality: str, x: torch.Tensor) -> torch.Tensor:
        """While training rotated, the pair's embeddings in one common orthogonal frame
        (RotatedHeads `pair`; the identity for one-sided methods)."""
        z = model(modality, x)
        return z if self.rotated is None else self.rotated.to_frame(modality, z)

    # -- projecting -----------------------------------------------------------------------------
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

    def project_gradient(self, m: str, head: torch.nn.Linear, p_out: Projector,
                         p_in: Projector) -> str | None:
        """grad ← grad − P_out grad P_in in place; the path taken (factored, dense) or None."""
        if self.factored is not None and self.factored.project_(m, p_out, p_in):
            return "factored"
        g = self._joined(head, grad=True) if self.bias_column else head.weight.grad
        if g is None:
            return None
        null_space_update_(g, g, p_out, p_in)
        if self.bias_column:
            self._split_into(head, g, grad=True)
        return "dense"

    @torch.no_grad()
    def before_optimizer_step(self, ctx: TaskContext) -> None:
        if self.where == "rotated":
            return
        for m, (p_out, p_in) in self.proj.items():
            head = ctx.model.heads[m]
            if self.where == "update":
                self.snap[m] = self._joined(head, grad=False).detach().clone()
            else:
                self.project_gradient(m, head, p_out, p_in)
        if self.factored is not None:
            self.factored.clear()

    @torch.no_grad()
    def after_optimizer_step(self, ctx: TaskContext) -> None:
        if self.rotated is not None:
            self.rotated.restore_()
        if self.where != "update":
            return
        for m, (p_out, p_in) in self.proj.items():
            head, before = ctx.model.heads[m], self.snap[m]
            if head.bias is None:  # W −= P_out ΔW P_in, in place
                null_space_update_(head.weight, head.weight - before, p_out, p_in)
                continue
            new = self._joined(head, grad=False)
            self._split_into(head, null_space_update_(new, new - before, p_out, p_in),
                             grad=False)

    def _close(self, ctx: TaskContext) -> None:
        """Drop the hooks; rotated weights go back to the original coordinates."""
        if self.factored is not None:
            self.factored.close()
            self.factored = None
        if self.rotated is not None:
            self.rotated.close()
            self.rotated = None

    # -- after the task: merge its pairs into the covariances -----------------------------------
    def update_outputs(self, ctx: TaskContext, xa: torch.Tensor, xb: torch.Tensor) -> None:
        """Add a chunk's partner embeddings to the output covariances (output_side only)."""

    @torch.no_grad()
    def after_task(self, ctx: TaskContext) -> None:
        """Add this task's inputs (and partner embeddings) to the running covariances."""
        self._close(ctx)
        st = self._require_state()
        a, b = ctx.modalities
        aug = self._bias(ctx.model)
        n = len(ctx.train[a])
        bs = ctx.cfg.train.batch_size * 16
        for i in range(0, n, bs):
            xa, xb = ctx.train[a][i: i + bs], ctx.train[b][i: i + bs]
            st.update_inputs(a, with_ones(xa, aug))
            st.update_inputs(b, with_ones(xb, aug))
            self.update_outputs(ctx, xa, xb)
        st.end_task(ctx.step, ctx.task, [a, b], n)
