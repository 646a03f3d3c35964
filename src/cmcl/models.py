"""Per-modality linear heads on frozen features: the trainable part of the CMCL setting."""

from __future__ import annotations

import torch
from torch import nn


class MultiHead(nn.Module):
    """One linear head W_m: R^{d_m} -> R^{embed_dim} per modality, all in one shared space."""

    def __init__(self, in_dims: dict[str, int], embed_dim: int, bias: bool = False) -> None:
        super().__init__()
        self.in_dims = dict(sorted(in_dims.items()))
        self.embed_dim = embed_dim
        self.heads = nn.ModuleDict(
            {m: nn.Linear(d, embed_dim, bias=bias) for m, d in self.in_dims.items()}
        )

    def forward(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        return self.heads[modality](x)

    def reset(self, init: str, seed: int) -> None:
        """Identity where shapes allow (the paper's init), else seeded orthogonal rows."""
        g = torch.Generator().manual_seed(seed)
        for head in self.heads.values():
            w = head.weight
            with torch.no_grad():
                if init == "identity" and w.shape[0] == w.shape[1]:
                    w.copy_(torch.eye(w.shape[0]))
                else:
                    q, _ = torch.linalg.qr(torch.randn(max(w.shape), min(w.shape), generator=g))
                    w.copy_(q if w.shape[0] >= w.shape[1] else q.T)
                if head.bias is not None:
                    head.bias.zero_()

    def config(self) -> dict:
        return {"in_dims": self.in_dims, "embed_dim": self.embed_dim,
                "bias": next(iter(self.heads.values())).bias is not None}

    def check_state(self, state: dict[str, torch.Tensor], where: str) -> None:
        """Refuse a checkpoint of another shape with both shapes named, before torch does."""
        own = self.state_dict()
        extra, missing = set(state) - set(own), set(own) - set(state)
        if extra or missing:
            raise ValueError(f"{where}: checkpoint keys differ from the model: "
                             f"unexpected {sorted(extra)}, missing {sorted(missing)}")
        for k, v in own.items():
            if tuple(state[k].shape) != tuple(v.shape):
                raise ValueError(f"{where}: '{k}' has shape {tuple(state[k].shape)} in the "
                                 f"checkpoint but {tuple(v.shape)} in the model")
