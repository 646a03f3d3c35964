"""WebDataset shards: task pairs in, tars + sizes.json + index.parquet out; and the one reader
of feature shards.

A task shard sample holds both modalities of the pair (`<modality>.<ext>`), the class (`cls`)
and provenance (`json`: the corpus ids of both sides). Dataset length comes from sizes.json
beside the tars, as in open_clip; index.parquet gives every sample's id, split, label, shard
and byte range, so readers can seek instead of scanning. Tars are standard WebDataset tars
(byte-identical to webdataset's `TarWriter(mtime=0)`), written and parsed by `cmcl.tario`.
"""

from __future__ import annotations

import inspect
import io
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cmcl import tario
from cmcl.corpora import Sample, open_corpus, resolve_classes
from cmcl.io import (
    DIGESTS,
    atomic_dir,
    check_digest,
    read_json,
    record_digests,
    sha256_bytes,
    sha256_file,
    write_json,
)
from cmcl.settings import CorpusSettings, relevance
from cmcl.shard_writer import write_index, write_shards  # noqa: F401  (re-exported: importers)
from cmcl.tario import KEY_OK, npy_bytes, tar_key  # noqa: F401  (re-exported: importers)

Pair = tuple[str, int | None, dict]


def iter_pairs(task: Mapping, samples: Iterable[Sample], split: str, seed: int = 0,
               max_per_class: int | None = None,
               names: Sequence[str] | None = None) -> Iterator[Pair]:
    """Yield the (key, label, {modality: (ext, payload)}) pairs of one task split.

    pairing "sample": both modalities come from the same corpus row; streamed, so a corpus
    larger than memory shards in constant memory.
    pairing "class": items of modality a and b with the same label are matched; the smaller
    side is cycled so that every item of the larger side appears once (seeded shuffle). This
    needs every item of the split at once, so it holds the split's payloads in memory.

    Once every pair is out, the split is refused (`_check_labels`) if its samples are partly
    labelled, unlabelled where the task needs labels, or leave one of the task's `classes`
    (indices; `names` their class names, for the message) without a pair.
    """
    a, b = task["modalities"]
    classes = task.get("classes")
    keep = set(classes) if classes else None
    rows = (s for s in samples if s.split == split and (keep is None or s.label in keep))
    count = _LabelCount()
    if task.get("pairing", "sample") == "sample":
        both = (count(s) for s in rows if a in s.data and b in s.data)
        yield from _cap(((s.id, s.label, {a: s.data[a], b: s.data[b]}) for s in both),
                        max_per_class)
        _check_labels(task, split, count, set(), names)
        return
    rng = np.random.default_rng(seed)
    side: dict[str, dict[int, list[Sample]]] = {a: defaultdict(list), b: defaultdict(list)}
    for s in rows:
        if a not in s.data and b not in s.data:
            continue
        count(s)
        if s.label is None:
            continue
        for m in (a, b):
            if m in s.data:
                side[m][s.label].append(s)
    _check_labels(task, split, count, set(side[a]) ^ set(side[b]), names)
    out = []
    for label in sorted(set(side[a]) & set(side[b])):
        xs, ys = side[a][label], side[b][label]
        xs = [xs[i] for i in rng.permutation(len(xs))]
        ys = [ys[i] for i in rng.permutation(len(ys))]
        n = max(len(xs), len(ys))
        for i in range(n):
            sa, sb = xs[i % len(xs)], ys[i % len(ys)]
            out.append((f"{sa.id}+{sb.id}", label, {a: sa.data[a], b: sb.data[b]}))
    yield from _cap(out, max_per_class)


class _LabelCount:
    """Counts a task split's samples, labelled and not, and the labels seen, as they pass."""

    def __init__(self) -> None:
        self.labelled = self.unlabelled = 0
        self.first_unlabelled: str | None = None
        self.first_labelled: str | None = None
        self.labels: set[int] = set()

    def __call__(self, s: Sample) -> Sample:
        if s.label is None:
            self.unlabelled += 1
            self.first_unlabelled = self.first_unlabelled or s.id
        else:
            self.labelled += 1
            self.first_labelled = self.first_labelled or s.id
            self.labels.add(s.label)
        return s


def _check_labels(task: Mapping, split: str, count: _LabelCount, one_sided: set[int],
                  names: Sequence[str] | None) -> None:
    """Refuse a split whose labels cannot be scored: a mix of labelled and unlabelled samples
    (the unlabelled ones would be scored as one more class), no labels where the task's
    pairing or relevance needs them, or a task class with no pair (a phantom class).
    `one_sided`: classes with items of one modality only (class pairing makes no pair)."""
    where = f"task '{task['name']}': split '{split}' of corpus '{task.get('corpus', '?')}'"
    n = count.labelled + count.unlabelled
    if count.labelled and count.unlabelled:
        raise ValueError(f"{where}: {count.unlabelled} of {n} samples have no label (first: "
                         f"'{count.first_unlabelled}'), {count.labelled} have one (first: "
                         f"'{count.first_labelled}'); a task's samples must all be labelled "
                         "or all unlabelled: label the rest, or narrow the task with `classes`")
    need = [f"pairing '{task['pairing']}'"] if task.get("pairing") == "class" else []
    need += [] if need or relevance(task) != "label" else ["relevance 'label'"]
    if count.unlabelled and need:
        raise ValueError(f"{where}: {need[0]} needs a label on every sample, but none of its "
                         f"{n} samples has one (first: '{count.first_unlabelled}'); give the "
                         "manifest a `label` column (class index or name) or use "
                         "`pairing: sample` with `relevance: instance`")
    wanted = sorted(task.get("classes") or ())
    empty = [c for c in wanted if c not in count.labels or c in one_sided]
    if empty and n:
        named = ", ".join(f"{c} ({names[c]!r})" if names and c < len(names) else str(c)
                          for c in empty)
        raise ValueError(f"{where}: the task's class(es) {named} have no sample with both "
                         f"{list(task['modalities'])} in this split; a class without pairs "
                         "scores as if it were not there: drop it from `tasks."
                         f"{task['name']}.classes` or add samples")


def task_pairs(task: Mapping, samples: Iterable[Sample], split: str, seed: int = 0,
               max_per_class: int | None = None) -> list[Pair]:
    """All pairs of `iter_pairs` as a list."""
    return list(iter_pairs(task, samples, split, seed, max_per_class))


def _cap(pairs: Iterable[Pair], max_per_class: int | None) -> Iterator[Pair]:
    if max_per_class is None:
        yield from pairs
        return
    seen: dict = defaultdict(int)
    for p in pairs:
        if seen[p[1]] < max_per_class:
            seen[p[1]] += 1
            yield p


def shard_task(task: Mapping, corpus: Mapping, split: str, out_dir: str | Path,
               samples_per_shard: int = 1000, max_per_class: int | None = None,
               workers: int = 1, max_shard_bytes: int | None = None) -> int:
    """Shard one task split from its corpus; an empty split is an error, not an empty file.

    `workers` > 1 reads and decodes samples in that many processes; the output is the same
    bytes for any `workers` (samples keep the corpus order). It pays off for decoding adapters
    (VGGSound: audio tracks decoded and resampled), not for already-encoded files, where
    shipping the bytes between processes costs more than reading them (benchmarks/bench_io.py).
    Only the requested split is read.
    """
    c = CorpusSettings.of(corpus)
    info, samples = open_corpus(task["corpus"], c.path, c.adapter, c.options)
    for m in task["modalities"]:
        if m not in info.modalities:
            raise ValueError(f"task '{task['name']}': corpus '{task['corpus']}' has no modality "
                             f"'{m}' (it has {sorted(info.modalities)})")
    if task.get("classes"):  # names (or indices of adapters unknown at start-up) -> indices
        task = {**task, "classes": resolve_classes(task["classes"], info.classes,
                                                   f"tasks.{task['name']}.classes")}
    rejected: list[dict] = []

    def good(stream: Iterable[Sample]) -> Iterator[Sample]:
        for smp in tqdm(stream, desc=f"shard {task['name']}/{split}", unit="sample",
                        leave=False, disable=None):
            if smp.error is not None:
                rejected.append({"corpus": task["corpus"], "id": smp.id, "reason": smp.error})
            else:
                yield smp

    def records(pairs: Iterable[Pair]) -> Iterator[dict]:
        for key, label, data in pairs:
            rec = {"__key__": tar_key(key), "json": {"id": key, "label": label}}
            if label is not None:
                rec["cls"] = label
            for m, (ext, payload) in data.items():
                rec[f"{m}.{ext}"] = payload
            yield rec

    # only the task's modalities are read, where the adapter can tell (cmcl.corpora.media)
    only = ({"modalities": list(task["modalities"])}
            if "modalities" in inspect.signature(samples).parameters else {})
    pairs = iter_pairs(task, good(samples(split, workers=workers, **only)), split,
                       c.seed, max_per_class, info.classes)
    with atomic_dir(out_dir) as tmp:
        n = sum(write_shards(tmp, records(pairs), samples_per_shard, "", max_shard_bytes,
                             split, f"task '{task['name']}': split '{split}' of corpus "
                             f"'{task['corpus']}'").values())
        if not n:
            raise ValueError(f"task '{task['name']}': split '{split}' of corpus "
                             f"'{task['corpus']}' has no sample with both {task['modalities']}")
        meta = {"task": task["name"], "split": split, "modalities": list(task["modalities"]),
                "count": n, "classes": info.classes, "templates": info.templates,
                "rejected": len(rejected)}
        (tmp / "rejected.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rejected))
        write_json(tmp / "meta.json", {**meta, DIGESTS: record_digests(tmp)})
    return n


def shard_urls(directory: str | Path) -> list[str]:
    directory = Path(directory)
    sizes = read_json(directory / "sizes.json")
    missing = [n for n in sizes if not (directory / n).exists()]
    if missing:
        raise FileNotFoundError(f"{directory}: shards listed in sizes.json are missing: {missing}")
    return [str(directory / n) for n in sorted(sizes)]


def iter_samples(directory: str | Path) -> Iterator[dict]:
    """Raw samples of a shard folder in a fixed order (no shuffling: callers decide), as
    webdataset dicts: `__key__`, `__url__` and one bytes value per member suffix.

    Read through webdataset's tar iterators (`tario.read_tars`), each tar checked against the
    count sizes.json lists; members are read into memory, never extracted, never decoded; a
    member name that climbs out of the archive (`../x`, `/etc/x`) stops the job.
    """
    sizes = read_json(Path(directory) / "sizes.json")
    yield from tario.read_tars({"url": u, "count": sizes[Path(u).name]}
                               for u in shard_urls(directory))


def load_npy(payload: bytes, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(payload), allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{where}: not a readable .npy array ({e})") from None


class _Rows:
    """Feature rows of one modality copied straight from the tar bytes into one array.

    The .npy header of the first sample is parsed once; a later payload with exactly that
    header and size is copied with `np.frombuffer` (no per-sample `np.load`). Anything else
    goes through `load_npy`, so a corrupt payload, another shape or another dtype is an error
    naming the tar and sample.
    """

    def __init__(self, modality: str, n: int) -> None:
        self.m, self.n = modality, n
        self.out: np.ndarray | None = None
        self.head = b""  # the .npy header bytes every fast-path payload starts with
        self.size, self.count, self.dtype = -1, 0, np.dtype(np.float32)

    def add(self, i: int, buf, off: int, size: int, where: str) -> None:
        h = len(self.head)
        if size == self.size and buf[off:off + h] == self.head:
            self.out[i] = np.frombuffer(buf, self.dtype, self.count, off + h).reshape(
                self.out.shape[1:])
            return
        payload = bytes(buf[off:off + size])
        arr = load_npy(payload, where)
        if self.out is None:
            self.out = np.empty((self.n, *arr.shape), np.float32)
            self.dtype, self.count = arr.dtype, arr.size
            if arr.ndim <= 1 or arr.flags.c_contiguous:
                self.head, self.size = payload[:size - arr.nbytes], size
        elif arr.shape != self.out.shape[1:] or arr.dtype != self.dtype:
            raise ValueError(f"{where}: '{self.m}' features of shape {arr.shape} and dtype "
                             f"{arr.dtype}, but earlier samples have {self.out.shape[1:]} and "
                             f"{self.dtype}")
        self.out[i] = arr


def read_features(directory: str | Path) -> dict:
    """Load a feature-shard folder into memory: {modality: float32 array (n, d)}, labels, keys.

    One pass over each tar's mmap (no per-sample objects): this is what makes reading a
    training split cheaper than a few of its epochs (benchmarks/bench_io.py). Each tar is
    hashed once from the same mmap and compared with the sha256 its producer recorded in
    meta.json (a damaged shard stops the job naming it); folders without digests are read as
    they are.
    """
    directory = Path(directory)
    meta = read_json(directory / "meta.json")
    digests = meta.get(DIGESTS) or {}
    check_digest(directory / "sizes.json", digests.get("sizes.json"),
                 sha256_file(directory / "sizes.json"))
    n = sum(read_json(directory / "sizes.json").values())
    rows = {m: _Rows(m, n) for m in meta["modalities"]}
    labels = np.full(n, -1, dtype=np.int64)
    keys: list[str] = []
    for url in shard_urls(directory):
        with tario.open_map(Path(url)) as buf:
            for key, parts in tario.samples(buf, url):
                i = len(keys)
                if i == n:
                    raise ValueError(f"{url}: the shards hold more samples than sizes.json "
                                     f"lists ({n})")
                for m, r in rows.items():
                    if f"{m}.npy" not in parts:
                        raise ValueError(f"{url}: sample '{key}' lacks '{m}.npy'")
                    r.add(i, buf, *parts[f"{m}.npy"], f"{url}:{key}.{m}.npy")
                if "cls" in parts:
                    o, s = parts["cls"]
                    labels[i] = int(buf[o:o + s])
                keys.append(key)
            if Path(url).name in digests:  # after parsing: a malformed tar is named as such
                check_digest(url, digests[Path(url).name], sha256_bytes(buf))
    if len(keys) != n:
        raise ValueError(f"{directory}: sizes.json lists {n} samples, the shards hold "
                         f"{len(keys)}")
    dims = meta.get("dims") or {}
    return {"meta": meta, "keys": keys, "labels": labels,
            **{m: r.out if r.out is not None else np.zeros((0, dims.get(m, 0)), np.float32)
               for m, r in rows.items()}}
