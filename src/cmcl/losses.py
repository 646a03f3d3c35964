"""Contrastive losses between two modalities' embeddings of paired samples."""

from __future__ import annotations

import torch
import torch.nn.functional as F

PRESETS = {
    # the DNS authors' code: tau = 1, raw dot products, a->b only
    "paper": {"temperature": 1.0, "normalize": False, "symmetric": False},
}


def resolve(cfg: dict) -> dict:
    """Loss options after applying a named preset (explicit keys lose to the preset)."""
    out = {"temperature": 0.1, "normalize": True, "symmetric": True}
    out.update({k: cfg[k] for k in out if k in cfg})
    out.update(PRESETS.get(cfg.get("preset", "default"), {}))
    return out


def info_nce(za: torch.Tensor, zb: torch.Tensor, temperature: float = 0.1,
             normalize: bool = True, symmetric: bool = True) -> torch.Tensor:
    """Cross-entropy over za zbᵀ / τ with row i's positive at column i (InfoNCE)."""
    if normalize:
        za, zb = F.normalize(za, dim=-1), F.normalize(zb, dim=-1)
    logits = za @ zb.T / temperature
    target = torch.arange(len(za), device=za.device)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = (loss + F.cross_entropy(logits.T, target)) / 2
    return loss
