"""Streaming readers of shard folders, for data larger than memory: webdataset pipelines.

`SampleStream` is a `wds.DataPipeline`: this epoch's plan (one item per consumer) ->
`wds.slice` by process rank -> `wds.split_by_worker` -> webdataset's tar iterators over the
consumer's byte ranges (`tario.read_tars`; ranges located through index.parquet, so every byte
of an epoch is read once across all processes) -> `wds.shuffle` (bounded buffer, seeded) ->
for `FeatureStream`, `wds.batched` with a collation that decodes the `.npy` rows. Nothing is
decoded by webdataset's decoders (they would unpickle `.pyd`/`.pickle` members).

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

Why the plan is ours: webdataset splits whole shards among ranks, so shards of unequal size give
ranks unequal batch counts; the plan cuts at sample boundaries, and webdataset's splitters then
hand each consumer its item. The rank is fixed when the stream is made (given, or
`pytorch_worker_info` in the launching process) and applied with `wds.slice`: a spawned
DataLoader worker sees no process group, where `wds.split_by_node` would take rank 0.

Use with a DataLoader: `DataLoader(FeatureStream(d, batch_size=64, shuffle=True), batch_size=None,
num_workers=W)`, calling `stream.set_epoch(e)` before each epoch. Under Accelerate pass
`rank=accelerator.process_index, world_size=accelerator.num_processes` and do not `prepare()`
this DataLoader (that would split it a second time); move batches to the device yourself.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import get_worker_info
from webdataset.utils import pytorch_worker_info

from cmcl import tario
from cmcl.io import read_json
from cmcl.shards import _Rows, shard_urls

EVEN = ("pad", "drop", None)


class SampleStream(wds.DataPipeline):
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
        r, w, _, _ = pytorch_worker_info()
        self.rank = r if rank is None else rank
        self.world_size = w if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in 0..{self.world_size - 1}")
        self.shuffle, self.seed, self.buffer_size, self.even = shuffle, seed, buffer_size, even
        self.epoch = 0
        super().__init__(self._consumers, wds.slice(self.rank, None, self.world_size),
                         wds.split_by_worker, self._read, self._shuffled if shuffle else None)

    def set_epoch(self, epoch: int) -> None:
        """Call before iterating each epoch: the shard order and buffer seeds depend on it."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Samples this rank yields per epoch (over all its workers)."""
        start, stop = self._rank_run(self.rank)
        return stop - start

    def _rank_run(self, r: int) -> tuple[int, int]:
        n, world = self.n, self.world_size
        if self.even == "pad":
            per = -(-n // world)
            return r * per, (r + 1) * per
        if self.even == "drop":
            per = n // world
            return r * per, (r + 1) * per
        return r * n // world, (r + 1) * n // world

    def plan(self, worker: int = 0, workers: int = 1, rank: int | None = None
             ) -> list[tuple[int, int, int]]:
        """(shard number, first, stop) sample runs that consumer (rank, worker) reads."""
        start, stop = self._rank_run(self.rank if rank is None else rank)
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

    def _consumers(self) -> Iterator[list[tuple[int, int, int]]]:
        """Every consumer's plan, worker-major: item `rank + world_size * worker` is consumer
        (rank, worker)'s, the one `wds.slice(rank, None, world_size)` then
        `wds.split_by_worker` leave it."""
        workers, info = pytorch_worker_info()[3], get_worker_info()
        if workers != (1 if info is None else info.num_workers):  # would drop samples silently
            raise ValueError(f"{self.directory}: WORKER/NUM_WORKERS are set in the environment, "
                             "so webdataset would read one worker's share of the samples here; "
                             "unset them (DataLoader workers are found without them)")
        for worker in range(workers):
            for rank in range(self.world_size):
                yield self.plan(worker, workers, rank)

    def _read(self, plans: Iterable[list[tuple[int, int, int]]]) -> Iterator[dict]:
        for runs in plans:
            yield from tario.read_tars(self._piece(*run) for run in runs)

    def _piece(self, shard: int, first: int, stop: int) -> dict:
        offsets, nbytes = self.spans[shard]
        return {"url": self.urls[shard], "start": offsets[first],
                "end": offsets[stop - 1] + nbytes[stop - 1], "count": stop - first}

    def _shuffled(self, samples: Iterator[dict]) -> Iterator[dict]:
        """webdataset's bounded shuffle, seeded per (seed, epoch, rank, worker)."""
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{pytorch_worker_info()[2]}")
        return wds.shuffle(self.buffer_size, self.buffer_size, rng=rng)(samples)


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


class FeatureStream(SampleStream):
    """Batches of a feature-shard folder: {"keys", "labels": int64 (b,), <modality>: float32
    (b, d)} tensors, decoded in the worker (use `DataLoader(..., batch_size=None)`)."""

    def __init__(self, directory: str | Path, batch_size: int = 64, **kw) -> None:
        super().__init__(directory, **kw)
        self.batch_size = batch_size
        self.modalities = read_json(self.directory / "meta.json")["modalities"]
        self.append(wds.batched(batch_size, collation_fn=self._collate))

    def _collate(self, batch: list[dict]) -> dict:
        """Only `<modality>.npy` (no pickle) and `cls` members are decoded."""
        out: dict = {"keys": [s["__key__"] for s in batch],
                     "labels": torch.tensor([int(s.get("cls", -1)) for s in batch])}
        for m in self.modalities:
            rows = _Rows(m, len(batch))
            for i, s in enumerate(batch):
                payload = s.get(f"{m}.npy")
                if payload is None:
                    raise ValueError(f"{s['__url__']}: sample '{s['__key__']}' lacks '{m}.npy'")
                rows.add(i, payload, 0, len(payload), f"{s['__url__']}:{s['__key__']}.{m}.npy")
            out[m] = torch.from_numpy(rows.out)
        return out
