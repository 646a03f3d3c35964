"""Adam-NSCL (Wang, Li, Sun, Xu, CVPR 2021), adapted to linear heads.

Adam-NSCL trains each layer in the approximate null space of its past inputs: with C the
uncentered covariance of all inputs the head saw on past tasks, the optimizer's actual update
is restricted to directions the old inputs (almost) never excite, ΔW ← ΔW (I − P_in), where
P_in projects onto the protected ("range") eigenvectors of C. For old inputs x in range(P_in),
ΔW x = 0, so old outputs W x stay fixed. The projection acts on the *update* after AdamW
(moments, decoupled weight decay and clipping included): the fit_task loop snapshots the
weights before `opt.step()` and projects the difference afterwards, which is where Adam-NSCL
applies its transform. A bias is treated as an input column fed a constant 1.

Rule for the protected subspace (option `threshold_mode`, value `a`):
- `relative` (default): protected = eigenvectors with eigenvalue > a · λ_max; the null space
  is the rest. Default a = 1e-3, the same relative input threshold as DNS's default, so the
  two methods differ only in DNS's extra output side. Why relative: a direction left free has
  an RMS old-input response below sqrt(a) ≈ 3% of the strongest direction's, the rule is
  invariant to the features' scale (ImageBind vs LanguageBind), and it is robust to rank
  deficiency.
- `min_ratio`: the paper's rule — the null space is spanned by eigenvectors with eigenvalue
  ≤ a · λ_min, λ_min the smallest eigenvalue (a ≥ 1; the authors' optimizer defaults to
  1.001, i.e. roughly the bottom eigenvalues only). It depends on the spectrum's tail, not
  on how much old energy is protected. On rank-deficient data (fewer past samples than d, or
  features living in a subspace) λ_min is rounding noise or exactly 0 after clamping, so the
  null space shrinks to the exact-zero directions and most noise directions stay protected:
  learning on that head almost stops. Offered for fidelity, not recommended.
- `absolute` / `energy`: the library's other modes (eigenvalue > a; kept-energy fraction a).
Option `placement`: `update` (default, as above) or `rotated` (opt-in): train each head in the
eigenbasis of P_in with the protected columns frozen (subspace.RotatedHeads): the same invariant
without the O(d²k) per-step projection (the inputs are rotated once per task), but AdamW's
moments live in rotated coordinates, so it is a different optimizer from the paper's.
Bias-free heads only.
Not reproduced: the authors divide the projection matrix by its Frobenius norm, which only
rescales the step size by 1/sqrt(null-space dim) — a learning-rate change, left to train.lr.
"""

from __future__ import annotations

import torch

from cmcl.settings import StepConfig
from cmcl.strategies import LR, log_range, register
from cmcl.strategies.bases.null_space import NullSpaceProjection
from cmcl.subspace import THRESHOLD_MODES, Projector, spectrum, threshold_rules


def min_ratio_rank(eigvals: torch.Tensor, a: float) -> int:
    """Protected dimension under Adam-NSCL's rule: null space = {λ ≤ a · λ_min}."""
    if eigvals.numel() == 0 or float(eigvals[0]) <= 0:
        return 0
    return int((eigvals > a * eigvals[-1]).sum())


@register
class AdamNSCL(NullSpaceProjection):
    name = "adam_nscl"
    description = "Adam-NSCL: restrict the AdamW update of each head to the null space of " \
                  "its past inputs' uncentered covariance"
    citation = ("Wang, Li, Sun, Xu. Training Networks in Null Space of Feature Covariance for "
                "Continual Learning. CVPR 2021")
    options = {"properties": {
        "placement": {"enum": ["update", "rotated"], "default": "update",
                      "description": "update: project the AdamW update (the paper's); "
                                     "rotated: AdamW in the eigenbasis of P_in with the "
                                     "protected columns frozen (same invariant, another "
                                     "optimizer, cheaper; bias-free heads only)"},
        "threshold_mode": {"enum": [*THRESHOLD_MODES, "min_ratio"], "default": "relative"},
        "a": {"type": "number", "minimum": 0, "default": 1e-3},
    }, "allOf": [*threshold_rules("a"), {
        "if": {"properties": {"threshold_mode": {"const": "min_ratio"}},
               "required": ["threshold_mode"]},
        "then": {"properties": {"a": {"minimum": 1, "$comment": (
            "threshold_mode min_ratio: the null space is the eigenvalues <= a x the smallest; "
            "a < 1 leaves it empty (no learning at all)")}}}}]}
    # the null-space threshold a (relative to the largest eigenvalue)
    space = {"a": log_range(1e-6, 0.3), "train.lr": LR}

    def __init__(self, cfg: StepConfig | dict) -> None:
        super().__init__(cfg)
        self.a = float(self.opts["a"])

    def input_projector(self, modality: str) -> Projector:
        if self.mode != "min_ratio":
            return self.side_projector(modality, "in", self.a)
        vals, vecs = spectrum(self._require_state().covariance(modality, "in"))
        return Projector(vecs, min_ratio_rank(vals, self.a))
