"""Streaming readers of shard folders, for data larger than memory (open_clip's pipeline shape).

shard list -> per-epoch seeded order -> split by process (rank) and DataLoader worker ->
bounded shuffle buffer -> decode (-> batch). Each consumer reads only its own byte ranges,
located through index.parquet, so every byte of an epoch is read once across all processes.

Splitting. An epoch's global order is the shards in a seeded order (`seed`, `epoch`), rotated
by a seeded offset; rank r takes a contiguous run of that order and splits it among its
DataLoader workers. With n samples and N ranks, `even` decides what happens when N does not
divide n (Accelerate needs the same number of batches on every rank, or the collective ops
of the short rank hang):
- "pad" (default): every rank gets ceil(n/N) samples; the last rank's run wraps around to
  the start of the order, so up to N-1 samples are seen twice in that epoch (as torch's
  DistributedSampler does). Every sample is seen at least once.
- "drop": every rank gets floor(n/N); up to N-1 samples (different ones each epoch when
  shuffling) are skipped that epoch. No sample is seen twice.
- None: ranks get floor or ceil(n/N), every sample exactly once; for one process, or a loop
  that tolerates unequal batch counts.
Workers of one rank split its run exactly (no padding). Ranks have equal runs, so with the same
worker count and batch size they yield the same number of batches.

Use with a DataLoader: `DataLoader(FeatureStream(d, batch_size=64, shuffle=True), batch_size=None,
num_workers=W)`, calling `stream.set_epoch(e)` before each epoch. Under Accelerate pass
`rank=accelerator.process_index, world_size=accelerator.num_processes` and do not `prepare()`
this DataLoader (that would split it a second time); move batches to the device yourself.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from cmcl import tario
from cmcl.io import read_json
from cmcl.shards import _Rows, shard_urls

EVEN = ("pad", "drop", None)


def _dist() -> tuple[int, int]:
    """(rank, world size) of this process: torch.distributed if running, else torchrun's env."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class SampleStream(IterableDataset):
    """Raw samples (webdataset dicts: `__key__`, `__url__`, suffix -> bytes) of a shard folder.

    Deterministic: the samples a consumer yields depend only on (seed, epoch, rank, world_size,
    worker, workers), never on timing.
    """

    def __init__(self, directory: str | Path, *, shuffle: bool = False, seed: int = 0,
                 buffer_size: int = 1000, rank: int | None = None,
                 world_size: int | None = None, even: str | None = "pad") -> None:
        if even not in EVEN:
            raise ValueError(f"even must be one of {EVEN}, not {even!r}")
        self.directory = Path(directory)
        self.urls = shard_urls(self.directory)
        self.sizes = [read_json(self.directory / "sizes.json")[Path(u).name] for u in self.urls]
        self.spans = _spans(self.directory, self.urls, self.sizes)
        self.n = sum(self.sizes)
        r, w = _dist()
        self.rank = r if rank is None else rank
        self.world_size = w if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in 0..{self.world_size - 1}")
        self.shuffle, self.seed, self.buffer_size, self.even = shuffle, seed, buffer_size, even
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Call before iterating each epoch: the shard order and buffer seeds depend on it."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Samples this rank yields per epoch (over all its workers)."""
        start, stop = self._rank_run()
        return stop - start

    def _rank_run(self) -> tuple[int, int]:
        n, world, r = self.n, self.world_size, self.rank
        if self.even == "pad":
            per = -(-n // world)
            return r * per, (r + 1) * per
        if self.even == "drop":
            per = n // world
            return r * per, (r + 1) * per
        return r * n // world, (r + 1) * n // world

    def plan(self, worker: int = 0, workers: int = 1) -> list[tuple[int, int, int]]:
        """(shard number, first, stop) sample runs that consumer (rank, worker) reads."""
        start, stop = self._rank_run()
        length = stop - start
        a, b = start + worker * length // workers, start + (worker + 1) * length // workers
        order = np.arange(len(self.sizes))
        rot = 0
        if self.shuffle and self.n:
            rng = np.random.default_rng([self.seed, self.epoch])
            order, rot = rng.permutation(order), int(rng.integers(self.n))
        ends = np.cumsum([self.sizes[k] for k in order]).tolist()
        runs, p = [], a
        while p < b:
            q = (p + rot) % self.n
            i = bisect.bisect_right(ends, q)
            local = q - (ends[i] - self.sizes[order[i]])
            take = min(b - p, self.sizes[order[i]] - local)
            runs.append((int(order[i]), local, local + take))
            p += take
        return runs

    def _raw(self, runs: list[tuple[int, int, int]]) -> Iterator[dict]:
        for shard, first, stop in runs:
            url = self.urls[shard]
            offsets, nbytes = self.spans[shard]
            with tario.open_map(Path(url)) as buf:
                end = offsets[stop - 1] + nbytes[stop - 1]
                for key, parts in tario.samples(buf, url, offsets[first], end):
                    yield {"__key__": key, "__url__": url,
                           **{k: bytes(buf[o:o + n]) for k, (o, n) in parts.items()}}

    def _consumer(self) -> tuple[int, int]:
        info = get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def samples(self) -> Iterator[dict]:
        """This consumer's raw samples for the current epoch, shuffled if asked."""
        worker, workers = self._consumer()
        raw = self._raw(self.plan(worker, workers))
        if not self.shuffle:
            return raw
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        return _buffered(raw, self.buffer_size, rng)

    def __iter__(self) -> Iterator[Any]:
        return self.samples()


def _buffered(items: Iterable, size: int, rng: np.random.Generator) -> Iterator:
    """Bounded shuffle: hold `size` items, emit a random one as each new item arrives."""
    buf: list = []
    for x in items:
        if len(buf) < size:
            buf.append(x)
            continue
        j = int(rng.integers(size))
        buf[j], x = x, buf[j]
        yield x
    for j in rng.permutation(len(buf)):
        yield buf[j]


def _spans(directory: Path, urls: list[str], sizes: list[int]) -> list[tuple[list, list]]:
    """Per shard: byte offset and size of each sample, from index.parquet."""
    import pyarrow.parquet as pq

    f = directory / "index.parquet"
    if not f.exists():
        raise FileNotFoundError(f"{f}: no index; streaming seeks by it (rewrite the shards with "
                                "cmcl.shards.write_shards)")
    table = pq.read_table(f, columns=["shard", "offset", "nbytes"]).to_pydict()
    by: dict[str, tuple[list, list]] = {Path(u).name: ([], []) for u in urls}
    for s, o, n in zip(table["shard"], table["offset"], table["nbytes"], strict=True):
        if s in by:
            by[s][0].append(o)
            by[s][1].append(n)
    out = [by[Path(u).name] for u in urls]
    bad = [Path(u).name for u, (o, _), n in zip(urls, out, sizes, strict=True) if len(o) != n]
    if bad:
        raise ValueError(f"{f}: sample counts of {bad} differ from sizes.json")
    return out


def batched(items: Iterable, n: int) -> Iterator[list]:
    """Lists of n consecutive items (the last may be shorter)."""
    batch: list = []
    for x in items:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


class FeatureStream(SampleStream):
    """Batches of a feature-shard folder: {"keys", "labels": int64 (b,), <modality>: float32
    (b, d)} tensors, decoded in the worker (use `DataLoader(..., batch_size=None)`)."""

    def __init__(self, directory: str | Path, batch_size: int = 64, **kw: Any) -> None:
        super().__init__(directory, **kw)
        self.batch_size = batch_size
        self.modalities = read_json(self.directory / "meta.json")["modalities"]

    def __iter__(self) -> Iterator[dict]:
        for batch in batched(self.samples(), self.batch_size):
            out: dict[str, Any] = {"keys": [s["__key__"] for s in batch],
                                   "labels": torch.tensor([int(s.get("cls", -1)) for s in batch])}
            for m in self.modalities:
                rows = _Rows(m, len(batch))
                for i, s in enumerate(batch):
                    where = f"{s['__url__']}:{s['__key__']}.{m}.npy"
                    if f"{m}.npy" not in s:
                        raise ValueError(f"{s['__url__']}: sample '{s['__key__']}' lacks "
                                         f"'{m}.npy'")
                    rows.add(i, s[f"{m}.npy"], 0, len(s[f"{m}.npy"]), where)
                out[m] = torch.from_numpy(rows.out)
            yield out
