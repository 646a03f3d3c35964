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

The machinery shared with GPM and Adam-NSCL (state, placements, projecting, the covariance
update) is cmcl.strategies.bases.null_space. DNS's own part: the partner (output) side and its
covariances, the `sides` ablation, and the faithful mode (bias left out, authors' counts).
"""

from __future__ import annotations

import torch

from cmcl.settings import StepConfig
from cmcl.strategies import LR, TaskContext, log_range, register
from cmcl.strategies.bases.null_space import NullSpaceProjection
from cmcl.subspace import THRESHOLD_MODES, Projector, threshold_rules


@register
class DNS(NullSpaceProjection):
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
    PLACEMENTS = {"exact": "update", "faithful": "gradient", "rotated": "rotated"}
    output_side = True

    def __init__(self, cfg: StepConfig | dict) -> None:
        super().__init__(cfg)
        p = self.opts
        self.sides = p["sides"]
        self.thr_in, self.thr_out = float(p["threshold_in"]), float(p["threshold_out"])
        fc = p["faithful_counts"]
        self.faithful_counts = self.placement == "faithful" if fc is None else bool(fc)
        self.paths = {"factored": 0, "dense": 0}  # faithful: projections taken by each path

    @property
    def bias_column(self) -> bool:
        """faithful leaves the bias alone, as the authors' code does."""
        return self.placement != "faithful"

    def task_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """In-task state for preemption checkpoints: only the path counters (see the base)."""
        return {"paths": dict(self.paths)}, {}

    def load_task_state(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        self.paths = dict(meta["paths"])

    def input_projector(self, modality: str) -> Projector:
        st = self._require_state()
        if self.sides == "output":
            return Projector.identity(st.in_cov[modality].dim)
        return self.side_projector(modality, "in", self.thr_in)

    def output_projector(self, modality: str) -> Projector:
        st = self._require_state()
        if self.sides == "input" or not st.seen(modality, "out"):
            return Projector.identity(st.out_dim)
        return self.side_projector(modality, "out", self.thr_out)

    def before_task(self, ctx: TaskContext) -> None:
        self.paths = {"factored": 0, "dense": 0}
        super().before_task(ctx)

    def project_gradient(self, m: str, head: torch.nn.Linear, p_out: Projector,
                         p_in: Projector) -> str | None:
        path = super().project_gradient(m, head, p_out, p_in)
        if path is not None:
            self.paths[path] += 1
        return path

    def _close(self, ctx: TaskContext) -> None:
        if self.placement == "faithful":
            ctx.extra["dns_gradient_paths"] = dict(self.paths)
        super()._close(ctx)

    def update_outputs(self, ctx: TaskContext, xa: torch.Tensor, xb: torch.Tensor) -> None:
        """Each head's partner embeddings; faithful: the authors' W Σ Wᵀ, the bias left out."""
        a, b = ctx.modalities
        if self.placement == "faithful":
            za, zb = xa @ ctx.model.heads[a].weight.T, xb @ ctx.model.heads[b].weight.T
        else:
            za, zb = ctx.model(a, xa), ctx.model(b, xb)
        st = self._require_state()
        st.update_outputs(a, zb)
        st.update_outputs(b, za)
