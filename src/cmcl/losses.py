"""Contrastive losses between two modalities' embeddings of paired samples."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # the losses need no Accelerate at import
    from accelerate import Accelerator


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


def gather_with_grad(acc: Accelerator, z: torch.Tensor) -> torch.Tensor:
    """All processes' embeddings, this process's slice keeping its autograd graph.

    The contrastive loss needs the negatives of the *global* batch (as open_clip's
    gather_features); other slices are constants here and get their gradient on their own rank.
    """
    if acc.num_processes == 1:
        return z
    everyone = acc.gather(z.detach())
    n, r = len(z), acc.process_index
    return torch.cat([everyone[: r * n], z, everyone[(r + 1) * n:]])
