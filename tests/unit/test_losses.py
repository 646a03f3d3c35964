"""InfoNCE and the authors' loss preset."""

from __future__ import annotations

import torch

from cmcl.losses import info_nce
from cmcl.settings import LossSettings


def test_info_nce_prefers_aligned_pairs():
    z = torch.nn.functional.normalize(torch.randn(16, 8), dim=-1)
    aligned = info_nce(z, z, temperature=0.1)
    shuffled = info_nce(z, z[torch.randperm(16)], temperature=0.1)
    assert aligned < shuffled
    one_way = info_nce(z, z.flip(0), normalize=False, symmetric=False)
    assert torch.isfinite(one_way)


def test_paper_preset_matches_the_authors_code():
    assert LossSettings.of({"preset": "paper", "temperature": 0.1}).nce() == {
        "temperature": 1.0, "normalize": False, "symmetric": False}
