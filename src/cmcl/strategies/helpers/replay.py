"""Memories of past pairs for the rehearsal baselines (ER, DER, DER++, GEM, A-GEM); not a method.

Ragged storage. Pairs of different tasks have different modalities and feature sizes, but each
modality has one fixed size (one encoder per modality, checked by `init_step`). So a memory keeps
one dense table per *modality*, indexed by slot: slot i of a pair (a, b) lives in row i of the
`a` and `b` tables, and `pair[i]` says which two tables to read. Replacing a slot is O(1) and
needs no padding or regrouping; tables are allocated on a modality's first sight, so the cost is
capacity x (sum of the seen modalities' dims) instead of capacity x (d_a + d_b), a few MB at the
paper's sizes. Stale rows of the other modalities in a slot are never read.

Everything is saved as safetensors + JSON; the reservoir's RNG state is in the JSON, so a run
resumed from a saved step makes exactly the decisions the uninterrupted run makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cmcl.io import load_tensors, read_json, save_tensors, write_json
from cmcl.losses import info_nce


@dataclass
class ReplayBatch:
    """Replayed pairs of one modality pair (a, b): features, stored embeddings, labels, tasks."""

    pair: tuple[str, str]
    x: dict[str, torch.Tensor]
    z: dict[str, torch.Tensor] | None
    labels: torch.Tensor
    task: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def step_generator(salt: int) -> torch.Generator:
    """A generator for one step's replay draws. train_step seeds torch with seed*1000 + step,
    so this differs per run and step, is reproducible, and leaves the global stream alone."""
    return torch.Generator().manual_seed((torch.initial_seed() * 1_000_003 + salt) % 2**63)


class SlotMemory:
    """Per-modality slot tables (see the module docstring) shared by both memory kinds."""

    kind = "memory"

    def __init__(self, capacity: int, store_embeddings: bool = False) -> None:
        self.capacity, self.store_embeddings = int(capacity), store_embeddings
        self.size = 0
        self.modalities: list[str] = []
        self.feat: dict[str, torch.Tensor] = {}
        self.emb: dict[str, torch.Tensor] = {}
        self.pair = torch.zeros(self.capacity, 2, dtype=torch.int64)
        self.labels = torch.zeros(self.capacity, dtype=torch.int64)
        self.task = torch.zeros(self.capacity, dtype=torch.int64)

    def _table(self, store: dict, m: str, like: torch.Tensor) -> torch.Tensor:
        if m not in self.modalities:
            self.modalities.append(m)
        if m not in store:
            store[m] = torch.zeros(self.capacity, like.shape[1], dtype=like.dtype)
        elif store[m].shape[1] != like.shape[1]:
            raise ValueError(f"{self.kind}: modality '{m}' has dim {store[m].shape[1]} in the "
                             f"memory but {like.shape[1]} in the new data")
        return store[m]

    def _write(self, slots: torch.Tensor, rows: torch.Tensor, pair: tuple[str, str],
               xs: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor, task: int,
               zs: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        for j, m in enumerate(pair):
            self._table(self.feat, m, xs[j])[slots] = xs[j].detach().cpu()[rows]
            if self.store_embeddings:
                if zs is None:
                    raise ValueError(f"{self.kind} stores embeddings: pass za and zb")
                self._table(self.emb, m, zs[j])[slots] = zs[j].detach().cpu()[rows]
        self.pair[slots] = torch.tensor([self.modalities.index(m) for m in pair])
        self.labels[slots] = labels.detach().cpu().to(torch.int64)[rows]
        self.task[slots] = task

    def gather(self, slots: torch.Tensor) -> list[ReplayBatch]:
        """Slots grouped by modality pair (pairs in a fixed order, slots in the given order)."""
        out = []
        for key in torch.unique(self.pair[slots], dim=0):
            sel = slots[(self.pair[slots] == key).all(1)]
            a, b = (self.modalities[int(i)] for i in key)
            z = {m: self.emb[m][sel] for m in (a, b)} if self.store_embeddings else None
            out.append(ReplayBatch((a, b), {m: self.feat[m][sel] for m in (a, b)}, z,
                                   self.labels[sel], self.task[sel]))
        return out

    def sample(self, n: int, generator: torch.Generator) -> list[ReplayBatch]:
        """Up to n distinct stored pairs drawn uniformly, grouped by modality pair."""
        return self.gather(torch.randperm(self.size, generator=generator)[: min(n, self.size)])

    # -- persistence ----------------------------------------------------------------------
    def _json(self) -> dict:
        return {"capacity": self.capacity, "size": self.size, "modalities": self.modalities,
                "store_embeddings": self.store_embeddings,
                "dims": {m: int(t.shape[1]) for m, t in self.feat.items()}}

    def save(self, directory: str | Path, name: str) -> None:
        directory = Path(directory)
        tensors = {"pair": self.pair, "labels": self.labels, "task": self.task}
        tensors |= {f"feat/{m}": t for m, t in self.feat.items()}
        tensors |= {f"emb/{m}": t for m, t in self.emb.items()}
        save_tensors(directory / f"{name}.safetensors", tensors)
        write_json(directory / f"{name}.json", self._json())

    def _restore(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        self.size, self.modalities = int(meta["size"]), list(meta["modalities"])
        self.pair, self.labels, self.task = tensors["pair"], tensors["labels"], tensors["task"]
        self.feat = {k[5:]: v for k, v in tensors.items() if k.startswith("feat/")}
        self.emb = {k[4:]: v for k, v in tensors.items() if k.startswith("emb/")}

    def check_dims(self, in_dims: dict[str, int], embed_dim: int, where: str) -> None:
        """Refuse a memory whose feature or embedding sizes do not match the model's heads."""
        for m, t in self.feat.items():
            if in_dims.get(m) != t.shape[1]:
                raise ValueError(f"{where}: modality '{m}' has dim {t.shape[1]} in the memory "
                                 f"but {in_dims.get(m)} in the model")
        for m, t in self.emb.items():
            if t.shape[1] != embed_dim:
                raise ValueError(f"{where}: stored '{m}' embeddings have dim {t.shape[1]} but "
                                 f"the model embeds into {embed_dim}")


class ReservoirBuffer(SlotMemory):
    """Fixed-capacity uniform sample of every pair streamed so far (Vitter's algorithm R).

    Item number n (0-based) fills slot n while n < capacity; later it draws j uniform in
    [0, n] and replaces slot j if j < capacity, so each of the N items seen is kept with
    probability capacity / N. A batch draws all its j at once; a slot hit twice in one batch
    keeps the later item, as the item-by-item algorithm would.
    """

    kind = "reservoir buffer"

    def __init__(self, capacity: int, seed: int, store_embeddings: bool = False) -> None:
        super().__init__(capacity, store_embeddings)
        self.seed, self.n_seen = int(seed), 0
        self.rng = np.random.Generator(np.random.PCG64(self.seed))

    def add(self, xa: torch.Tensor, xb: torch.Tensor, pair: tuple[str, str],
            labels: torch.Tensor, task: int, za: torch.Tensor | None = None,
            zb: torch.Tensor | None = None) -> None:
        n = len(xa)
        pos = np.arange(self.n_seen, self.n_seen + n)
        slots = pos.copy()
        late = pos >= self.capacity
        if late.any():
            j = self.rng.integers(0, pos[late] + 1)
            slots[late] = np.where(j < self.capacity, j, -1)
        rows = np.nonzero(slots >= 0)[0]
        # last write wins: keep each slot's latest row only
        _, last = np.unique(slots[rows][::-1], return_index=True)
        rows = np.sort(rows[::-1][last])
        self.n_seen += n
        self.size = min(self.capacity, self.n_seen)
        if len(rows):
            r = torch.from_numpy(rows)
            self._write(torch.from_numpy(slots[rows]), r, pair, (xa, xb), labels, task,
                        None if za is None or zb is None else (za, zb))

    def _json(self) -> dict:
        return super()._json() | {"seed": self.seed, "n_seen": self.n_seen,
                                  "rng": self.rng.bit_generator.state}

    @classmethod
    def load(cls, directory: str | Path, name: str) -> ReservoirBuffer:
        meta = read_json(Path(directory) / f"{name}.json")
        buf = cls(meta["capacity"], meta["seed"], meta["store_embeddings"])
        buf._restore(meta, load_tensors(Path(directory) / f"{name}.safetensors"))
        buf.n_seen = int(meta["n_seen"])
        buf.rng.bit_generator.state = meta["rng"]
        return buf


class EpisodicMemory(SlotMemory):
    """Per-task episodic memory (GEM, A-GEM): a seeded random subset of each finished task."""

    kind = "episodic memory"

    def __init__(self, per_task: int, capacity: int = 0) -> None:
        super().__init__(capacity)
        self.per_task = int(per_task)
        self.tasks: list[dict] = []  # {"task": step, "name": ..., "pair": [a, b], "n": ...}

    def _grow(self, extra: int) -> None:
        """Tables grow by whole tasks: the memory size is per_task x tasks, not fixed."""
        self.capacity += extra
        pad = {"pair": (extra, 2), "labels": (extra,), "task": (extra,)}
        for k, shape in pad.items():
            setattr(self, k, torch.cat([getattr(self, k), torch.zeros(shape, dtype=torch.int64)]))
        for m, t in self.feat.items():
            self.feat[m] = torch.cat([t, t.new_zeros(extra, t.shape[1])])

    def add_task(self, task: int, name: str, pair: tuple[str, str], xa: torch.Tensor,
                 xb: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> None:
        n = min(self.per_task, len(xa))
        rows = torch.randperm(len(xa), generator=generator)[:n].sort().values
        self._grow(n)
        slots = torch.arange(self.size, self.size + n)
        self._write(slots, rows, pair, (xa, xb), labels, task, None)
        self.size += n
        self.tasks.append({"task": task, "name": name, "pair": list(pair), "n": n})

    def task_batches(self) -> list[ReplayBatch]:
        """The whole memory of each past task, one batch per task (GEM's constraints)."""
        return [self.gather(torch.nonzero(self.task[: self.size] == t["task"])[:, 0])[0]
                for t in self.tasks]

    def _json(self) -> dict:
        return super()._json() | {"per_task": self.per_task, "tasks": self.tasks}

    @classmethod
    def load(cls, directory: str | Path, name: str) -> EpisodicMemory:
        meta = read_json(Path(directory) / f"{name}.json")
        mem = cls(meta["per_task"], meta["capacity"])
        mem._restore(meta, load_tensors(Path(directory) / f"{name}.safetensors"))
        mem.tasks = meta["tasks"]
        return mem


def replay_loss(embed, batches: list[ReplayBatch], loss_opts: dict, trained: set[str],
                device: torch.device) -> torch.Tensor | None:
    """InfoNCE of replayed pairs, each modality pair's loss weighted by its share of the batch.

    Heads outside `trained` are embedded without a graph: the optimizer does not update them,
    and a graph would leave gradients on them that nothing ever clears.
    """
    total, n = None, sum(len(b) for b in batches if len(b) > 1)
    for rb in batches:
        if len(rb) < 2:  # InfoNCE of a single pair is log 1 = 0: no signal
            continue
        z = {m: _embed(embed, m, rb.x[m].to(device), m in trained) for m in rb.pair}
        term = info_nce(z[rb.pair[0]], z[rb.pair[1]], **loss_opts) * (len(rb) / n)
        total = term if total is None else total + term
    return total


def _embed(embed, m: str, x: torch.Tensor, grad: bool) -> torch.Tensor:
    if grad:
        return embed(m, x)
    with torch.no_grad():
        return embed(m, x)
