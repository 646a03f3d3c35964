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

The machinery shared with Adam-NSCL and DNS (state, placements, projecting, the covariance
update) is cmcl.strategies.bases.null_space; one-sided, its state has an empty (0-dim) output
side. GPM's own part is its options and its kept-energy input projector.
"""

from __future__ import annotations

from cmcl.settings import StepConfig
from cmcl.strategies import LR, register
from cmcl.strategies.bases.null_space import NullSpaceProjection
from cmcl.subspace import THRESHOLD_MODES, Projector, threshold_rules


@register
class GPM(NullSpaceProjection):
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

    def __init__(self, cfg: StepConfig | dict) -> None:
        super().__init__(cfg)
        self.threshold = float(self.opts["threshold"])

    def input_projector(self, modality: str) -> Projector:
        return self.side_projector(modality, "in", self.threshold)
