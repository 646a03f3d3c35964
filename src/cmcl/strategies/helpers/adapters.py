"""COMM's trainable part: per-modality adapter pools and relevance routers; not a method.

Kept as plain tensors (not an nn.Module) so the strategy can snapshot, move and save them
without touching the model, and so a pool can be frozen by flipping requires_grad. See
cmcl.strategies.comm for the design choices.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class Adapters:
    """Pools {modality: keys (P,d), down (P,r,d), up (P,d,r)}; routers {d: MLP w1, b1, w2, b2}."""

    def __init__(self, identity: bool, key_temperature: float, hidden: int = 64) -> None:
        self.identity, self.tau, self.hidden = identity, float(key_temperature), int(hidden)
        self.pools: dict[str, dict[str, torch.Tensor]] = {}
        self.routers: dict[int, dict[str, torch.Tensor]] = {}
        self.router_mods: dict[int, list[str]] = {}  # router rows: modalities with pools of size d

    def _all(self) -> list[tuple[dict, str]]:
        """Every tensor as (holder, key), in a canonical order (saved and live state agree)."""
        pools = [(self.pools[m], k) for m in sorted(self.pools) for k in sorted(self.pools[m])]
        return pools + [(self.routers[d], k) for d in sorted(self.routers)
                        for k in sorted(self.routers[d])]

    @property
    def device(self) -> torch.device | None:
        items = self._all()
        return items[0][0][items[0][1]].device if items else None

    def to(self, device: torch.device) -> None:
        for holder, k in self._all():
            t = holder[k]
            holder[k] = t.detach().to(device).requires_grad_(t.requires_grad)

    def clone(self) -> Adapters:
        """A frozen copy (the step-start model of the self-regulariser)."""
        out = Adapters(self.identity, self.tau, self.hidden)
        out.pools = {m: {k: v.detach().clone() for k, v in p.items()}
                     for m, p in self.pools.items()}
        out.routers = {d: {k: v.detach().clone() for k, v in r.items()}
                       for d, r in self.routers.items()}
        out.router_mods = {d: list(v) for d, v in self.router_mods.items()}
        return out

    # -- growth and training ----------------------------------------------------------------
    def add_pool(self, m: str, d: int, size: int, rank: int, gen: torch.Generator,
                 device: torch.device) -> None:
        """A new modality's pool (identity map at init) and, agnostic mode, its router row."""
        if m in self.pools:
            return
        self.pools[m] = {"keys": torch.randn(size, d, generator=gen).to(device),
                         "down": (torch.randn(size, rank, d, generator=gen) / math.sqrt(d))
                         .to(device),
                         "up": torch.zeros(size, d, rank, device=device)}
        if self.identity:
            return
        names = self.router_mods.setdefault(d, [])
        names.append(m)
        if d not in self.routers:  # hidden layer: random; output rows: zero (uniform start)
            self.routers[d] = {
                "w1": (torch.randn(self.hidden, d, generator=gen) / math.sqrt(d)).to(device),
                "b1": torch.zeros(self.hidden, device=device),
                "w2": torch.zeros(0, self.hidden, device=device),
                "b2": torch.zeros(0, device=device)}
        r = self.routers[d]
        r["w2"] = torch.cat([r["w2"].detach(), r["w2"].new_zeros(1, r["w2"].shape[1])])
        r["b2"] = torch.cat([r["b2"].detach(), r["b2"].new_zeros(1)])

    def set_trainable(self, modalities) -> None:
        """Only the task's pools and the routers of their input sizes train."""
        sizes = {self.pools[m]["keys"].shape[1] for m in modalities}
        for m, p in self.pools.items():
            for t in p.values():
                t.requires_grad_(m in modalities)
        for d, r in self.routers.items():
            for t in r.values():
                t.requires_grad_(d in sizes)

    def trainable(self) -> list[torch.Tensor]:
        return [h[k] for h, k in self._all() if h[k].requires_grad]

    # -- forward --------------------------------------------------------------------------
    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """A one-hidden-layer MLP on the normalised feature: a linear router cannot tell
        modalities apart whose features are symmetric about the origin."""
        r = self.routers[x.shape[1]]
        h = F.relu(F.normalize(x, dim=-1) * math.sqrt(x.shape[1]) @ r["w1"].T + r["b1"])
        return h @ r["w2"].T + r["b2"]

    def route(self, m: str, x: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """(pool names, weights (n, K) summing to 1 per row); ([], (n, 0)) if none applies."""
        if self.identity:
            if m not in self.pools:
                return [], x.new_zeros(len(x), 0)
            return [m], x.new_ones(len(x), 1)
        names = self.router_mods.get(x.shape[1], [])
        if not names:
            return [], x.new_zeros(len(x), 0)
        return names, self.router_logits(x).softmax(1)

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Σ_k w_k(x) U_k V_kᵀ x for one pool, w from the key similarities."""
        p = self.pools[name]
        cos = F.normalize(x, dim=-1) @ F.normalize(p["keys"], dim=-1).T
        w = (cos / self.tau).softmax(1)
        h = torch.einsum("prd,nd->npr", p["down"], x) * w[..., None]
        return torch.einsum("pdr,npr->nd", p["up"], h)

    def adapt(self, m: str, x: torch.Tensor) -> torch.Tensor:
        names, r = self.route(m, x)
        """x + Σ_j R_j(x) Δ_j(x): every pool sees the frozen feature itself."""
        names, r = self.route(m, x)
        r = r.detach()
        out = x
        for j, name in enumerate(names):
            out = out + r[:, j: j + 1] * self.delta(name, x)
        return out

    def key_loss(self, m: str, x: torch.Tensor) -> torch.Tensor:
        """L2P's surrogate: pull the keys a query selects toward the query."""
        k = self.pools[m]["keys"]
        cos = F.normalize(x, dim=-1) @ F.normalize(k, dim=-1).T
        w = (cos / self.tau).softmax(1).detach()
        return (w * (1 - cos)).sum(1).mean()

    def router_loss(self, items: list[tuple[torch.Tensor, str]]) -> torch.Tensor | None:
        """Cross-entropy of the modality recognised by each size's router (agnostic mode)."""
        if self.identity:
            return None
        terms = []
        for x, m in items:
            names = self.router_mods.get(x.shape[1], [])
            if len(names) < 2 or not self.routers[x.shape[1]]["w2"].requires_grad:
                continue
            target = torch.full((len(x),), names.index(m), device=x.device)
            terms.append(F.cross_entropy(self.router_logits(x), target))
        return sum(terms[1:], terms[0]) / len(terms) if terms else None

    # -- persistence ----------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
        tensors = {f"pool/{m}/{k}": v for m, p in self.pools.items() for k, v in p.items()}
        tensors |= {f"router/{d}/{k}": v for d, r in self.routers.items() for k, v in r.items()}
        return tensors, {str(d): v for d, v in self.router_mods.items()}

    def restore(self, tensors: dict[str, torch.Tensor], routers: dict[str, list[str]]) -> None:
        self.pools, self.routers = {}, {}
        for key, v in tensors.items():
            kind, owner, k = key.split("/")
            if kind == "pool":
                self.pools.setdefault(owner, {})[k] = v
            else:
                self.routers.setdefault(int(owner), {})[k] = v
        self.router_mods = {int(d): list(v) for d, v in routers.items()}

    def check_dims(self, in_dims: dict[str, int], where: str) -> None:
        for m, p in self.pools.items():
            if in_dims.get(m) != p["keys"].shape[1]:
                raise ValueError(f"{where}: pool '{m}' has input size {p['keys'].shape[1]} but "
                                 f"the model's '{m}' head takes {in_dims.get(m)}")
