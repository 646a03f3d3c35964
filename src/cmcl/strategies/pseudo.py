"""Gaussian pseudo-features of finished tasks (COMM's embedding re-alignment); not a method.

After a task (a, b) its paired input features are summarised per group — per class when the
task has classes, else one group for the whole task — by the mean and covariance of the
*joint* feature [x_a, x_b] (dimension D = d_a + d_b). Each modality's own mean and covariance
are the diagonal blocks; the joint form also keeps the a-b cross-covariance, so pseudo pairs
drawn without labels are still paired (correlated) rather than two independent clouds.

Covariance, `lowrank` (default): Σ ≈ L Lᵀ + diag(r), L the top-k principal directions scaled
by their standard deviations (unbiased), r the leftover per-coordinate variance, so every
coordinate's variance is exact and the k strongest correlations are kept in O(D k) memory.
`diag`: Σ = diag(var), coordinates independent (a and b then share only the class mean).
Samples are μ + L ε + √r ⊙ η with ε, η standard normal from a caller's generator.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from cmcl.io import load_tensors, read_json, save_tensors, write_json


def top_factor(xc: torch.Tensor, rank: int, gen: torch.Generator) -> torch.Tensor:
    """L (D, k) with L Lᵀ = the top-k part of the sample covariance of centred rows xc."""
    n, d = xc.shape
    k = min(rank, n - 1, d)
    if k <= 0:
        return xc.new_zeros(d, 0)
    if min(n, d) <= 512:
        _, s, vt = torch.linalg.svd(xc, full_matrices=False)
    else:  # randomized range finder with power iterations: O(n d k) instead of O(n d min(n,d))
        q = torch.randn(d, min(k + 8, d), generator=gen, dtype=xc.dtype)
        for _ in range(4):
            q, _ = torch.linalg.qr(xc.T @ (xc @ q))
        _, s, vt = torch.linalg.svd(xc @ q, full_matrices=False)
        vt = vt @ q.T
    return vt[:k].T * (s[:k] / math.sqrt(n - 1))


def groups_of(labels: torch.Tensor) -> torch.Tensor:
    """Group id per sample: the class when the task has classes (labels >= 0, at least two
    samples per class on average), else -1 for every sample (labels are ids or absent)."""
    classes = torch.unique(labels)
    if (labels >= 0).all() and len(classes) <= len(labels) // 2:
        return labels
    return torch.full_like(labels, -1)


class GaussianMemory:
    """Per-task, per-group Gaussians of paired input features, saved as safetensors + JSON."""

    def __init__(self, covariance: str = "lowrank", rank: int = 4) -> None:
        self.covariance, self.rank = covariance, int(rank)
        self.entries: list[dict] = []  # {"step", "task", "pair", "dims", "groups"}
        self.stats: list[dict[str, torch.Tensor]] = []  # mean (G,D), var (G,D), factor, count

    def __len__(self) -> int:
        return len(self.entries)

    @torch.no_grad()
    def add_task(self, step: int, task: str, pair: tuple[str, str], xa: torch.Tensor,
                 xb: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> None:
        x = torch.cat([xa, xb], 1).detach().cpu().float()
        g = groups_of(labels.detach().cpu())
        keys = torch.unique(g)
        mean, var, factor, count = [], [], [], []
        k = self.rank if self.covariance == "lowrank" else 0
        for key in keys:
            xs = x[g == key]
            mu = xs.mean(0)
            xc = xs - mu
            v = xc.pow(2).sum(0) / max(len(xs) - 1, 1)
            f = top_factor(xc, k, gen) if k else xc.new_zeros(x.shape[1], 0)
            f = torch.cat([f, f.new_zeros(x.shape[1], k - f.shape[1])], 1)  # pad to rank k
            mean.append(mu)
            var.append((v - f.pow(2).sum(1)).clamp(min=0))
            factor.append(f)
            count.append(len(xs))
        self.entries.append({"step": step, "task": task, "pair": list(pair),
                             "dims": [xa.shape[1], xb.shape[1]], "groups": keys.tolist()})
        self.stats.append({"mean": torch.stack(mean), "var": torch.stack(var),
                           "factor": torch.stack(factor),
                           "count": torch.tensor(count, dtype=torch.int64)})

    def covariance_of(self, i: int, group: int) -> torch.Tensor:
        """The model covariance L Lᵀ + diag(r) of one group (for checks; D x D)."""
        st = self.stats[i]
        f = st["factor"][group]
        return f @ f.T + torch.diag(st["var"][group])

    def sample(self, i: int, n: int, gen: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """n pseudo pairs of entry i: groups drawn in proportion to their sizes."""
        st, (da, _) = self.stats[i], self.entries[i]["dims"]
        grp = torch.multinomial(st["count"].double(), n, replacement=True, generator=gen)
        f = st["factor"][grp]
        x = st["mean"][grp] + torch.randn(n, st["var"].shape[1], generator=gen) * \
            st["var"][grp].sqrt()
        if f.shape[2]:
            x = x + (f @ torch.randn(n, f.shape[2], 1, generator=gen))[..., 0]
        return x[:, :da], x[:, da:], grp

    # -- persistence ----------------------------------------------------------------------
    def save(self, directory: Path, name: str) -> None:
        tensors = {f"{i}/{k}": v for i, st in enumerate(self.stats) for k, v in st.items()}
        save_tensors(directory / f"{name}.safetensors", tensors)
        write_json(directory / f"{name}.json", {"covariance": self.covariance,
                                                "rank": self.rank, "entries": self.entries})

    @classmethod
    def load(cls, directory: Path, name: str) -> GaussianMemory:
        meta = read_json(directory / f"{name}.json")
        mem = cls(meta["covariance"], meta["rank"])
        mem.entries = meta["entries"]
        t = load_tensors(directory / f"{name}.safetensors")
        mem.stats = [{k: t[f"{i}/{k}"] for k in ("mean", "var", "factor", "count")}
                     for i in range(len(mem.entries))]
        return mem
