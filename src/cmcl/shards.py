"""WebDataset shards: task pairs in, tars + sizes.json out; and the one reader of feature shards.

A task shard sample holds both modalities of the pair (`<modality>.<ext>`), the class (`cls`)
and provenance (`json`: the corpus ids of both sides). Dataset length comes from sizes.json
beside the tars, as in open_clip.
"""

from __future__ import annotations

import io
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import webdataset as wds

from cmcl.corpora import Sample, open_corpus
from cmcl.io import atomic_dir, atomic_path, read_json, write_json

KEY_OK = re.compile(r"[^A-Za-z0-9_+-]")


def task_pairs(task: Mapping, samples: Iterable[Sample], split: str, seed: int = 0,
               max_per_class: int | None = None) -> list[tuple[str, int | None, dict]]:
    """Form the (key, label, {modality: (ext, payload)}) pairs of one task split.

    pairing "sample": both modalities come from the same corpus row.
    pairing "class": items of modality a and b with the same label are matched; the smaller
    side is cycled so that every item of the larger side appears once (seeded shuffle).
    """
    a, b = task["modalities"]
    classes = task.get("classes")
    keep = set(classes) if classes else None
    rows = [s for s in samples if s.split == split and (keep is None or s.label in keep)]
    if task.get("pairing", "sample") == "sample":
        out = [(s.id, s.label, {a: s.data[a], b: s.data[b]}) for s in rows
               if a in s.data and b in s.data]
        return _cap(out, max_per_class)
    rng = np.random.default_rng(seed)
    side: dict[str, dict[int, list[Sample]]] = {a: defaultdict(list), b: defaultdict(list)}
    for s in rows:
        if s.label is None:
            raise ValueError(f"task '{task['name']}': pairing by class needs labels; "
                             f"sample '{s.id}' has none")
        for m in (a, b):
            if m in s.data:
                side[m][s.label].append(s)
    out = []
    for label in sorted(set(side[a]) & set(side[b])):
        xs, ys = side[a][label], side[b][label]
        xs = [xs[i] for i in rng.permutation(len(xs))]
        ys = [ys[i] for i in rng.permutation(len(ys))]
        n = max(len(xs), len(ys))
        for i in range(n):
            sa, sb = xs[i % len(xs)], ys[i % len(ys)]
            out.append((f"{sa.id}+{sb.id}", label, {a: sa.data[a], b: sb.data[b]}))
    return _cap(out, max_per_class)


def _cap(pairs: list, max_per_class: int | None) -> list:
    if max_per_class is None:
        return pairs
    seen: dict = defaultdict(int)
    kept = []
    for p in pairs:
        if seen[p[1]] < max_per_class:
            seen[p[1]] += 1
            kept.append(p)
    return kept


def write_shards(out_dir: str | Path, records: Iterable[dict], samples_per_shard: int,
                 prefix: str = "") -> dict[str, int]:
    """Write WebDataset tars `<prefix>NNNNNN.tar` + sizes.json into `out_dir`.

    Callers wrap this in `atomic_dir`, so the folder appears only once complete.
    """
    out_dir = Path(out_dir)
    sizes: dict[str, int] = {}
    writer, count, shard = None, 0, -1
    for rec in records:
        if writer is None or count == samples_per_shard:
            if writer is not None:
                writer.close()
            shard += 1
            name = f"{prefix}{shard:06d}.tar"
            # fixed mtime: the same input gives byte-identical shards
            writer, count = wds.TarWriter(str(out_dir / name), mtime=0), 0
            sizes[name] = 0
        writer.write(rec)
        count += 1
        sizes[name] += 1
    if writer is not None:
        writer.close()
    write_json(out_dir / "sizes.json", sizes)
    write_index(out_dir, sizes)
    return sizes


def write_index(out_dir: Path, sizes: Mapping[str, int]) -> None:
    """index.parquet: key, shard, byte offset and size of every sample's members (random
    access and audits without untarring)."""
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: dict[tuple[str, str], list[int]] = {}
    for shard in sorted(sizes):
        with tarfile.open(out_dir / shard) as tar:
            for m in tar.getmembers():
                key = m.name.split(".", 1)[0]
                r = rows.setdefault((shard, key), [m.offset, 0])
                r[1] = m.offset_data + m.size - r[0]
    table = pa.table({"key": [k for _, k in rows], "shard": [s for s, _ in rows],
                      "offset": [v[0] for v in rows.values()],
                      "nbytes": [v[1] for v in rows.values()]})
    with atomic_path(out_dir / "index.parquet") as tmp:
        pq.write_table(table, tmp)


def shard_task(task: Mapping, corpus: Mapping, split: str, out_dir: str | Path,
               samples_per_shard: int = 1000, max_per_class: int | None = None) -> int:
    """Shard one task split from its corpus; an empty split is an error, not an empty file."""
    info, samples = open_corpus(task["corpus"], corpus["path"], corpus.get("adapter", "generic"),
                                corpus.get("options"))
    for m in task["modalities"]:
        if m not in info.modalities:
            raise ValueError(f"task '{task['name']}': corpus '{task['corpus']}' has no modality "
                             f"'{m}' (it has {sorted(info.modalities)})")
    rejected: list[dict] = []

    def good(stream):
        for smp in stream:
            if smp.error is not None:
                rejected.append({"corpus": task["corpus"], "id": smp.id, "reason": smp.error})
            else:
                yield smp

    pairs = task_pairs(task, good(samples()), split, corpus.get("seed", 0), max_per_class)
    if not pairs:
        raise ValueError(f"task '{task['name']}': split '{split}' of corpus '{task['corpus']}' "
                         f"has no sample with both {task['modalities']}")

    def records() -> Iterator[dict]:
        for key, label, data in pairs:
            rec = {"__key__": KEY_OK.sub("_", key), "json": {"id": key, "label": label}}
            if label is not None:
                rec["cls"] = label
            for m, (ext, payload) in data.items():
                rec[f"{m}.{ext}"] = payload
            yield rec

    meta = {"task": task["name"], "split": split, "modalities": list(task["modalities"]),
            "count": len(pairs), "classes": info.classes, "templates": info.templates,
            "rejected": len(rejected)}
    with atomic_dir(out_dir) as tmp:
        write_shards(tmp, records(), samples_per_shard)
        write_json(tmp / "meta.json", meta)
        (tmp / "rejected.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rejected))
    return len(pairs)


def shard_urls(directory: str | Path) -> list[str]:
    directory = Path(directory)
    sizes = read_json(directory / "sizes.json")
    missing = [n for n in sizes if not (directory / n).exists()]
    if missing:
        raise FileNotFoundError(f"{directory}: shards listed in sizes.json are missing: {missing}")
    return [str(directory / n) for n in sorted(sizes)]


def _all(urls):
    return urls


def iter_samples(directory: str | Path) -> Iterator[dict]:
    """Raw samples of a shard folder in a fixed order (no shuffling: callers decide).

    Members are read into memory, never extracted; a member name that climbs out of the archive
    (`../x`, `/etc/x`) marks a crafted or corrupt tar and stops the job.
    """
    # every process reads the whole split (features fit in memory); Accelerate's DataLoader
    # then splits each global batch across processes
    ds = wds.WebDataset(shard_urls(directory), shardshuffle=False, empty_check=False,
                        nodesplitter=_all, workersplitter=_all)
    for s in ds:
        key = s["__key__"]
        if key.startswith("/") or ".." in Path(key).parts:
            raise ValueError(f"{s.get('__url__')}: member '{key}' has an unsafe path "
                             "(absolute or '..'); refusing this tar")
        yield s


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def load_npy(payload: bytes, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(payload), allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{where}: not a readable .npy array ({e})") from None


def read_features(directory: str | Path) -> dict:
    """Load a feature-shard folder into memory: {modality: float32 array (n, d)}, labels, keys."""
    meta = read_json(Path(directory) / "meta.json")
    mods = meta["modalities"]
    feats: dict[str, list] = {m: [] for m in mods}
    labels, keys = [], []
    for s in iter_samples(directory):
        for m in mods:
            if f"{m}.npy" not in s:
                raise ValueError(f"{directory}: sample '{s['__key__']}' lacks '{m}.npy'")
            feats[m].append(load_npy(s[f"{m}.npy"], f"{s['__url__']}:{s['__key__']}.{m}.npy"))
        labels.append(int(s["cls"]) if "cls" in s else -1)
        keys.append(s["__key__"])
    return {"meta": meta, "keys": keys, "labels": np.asarray(labels, dtype=np.int64),
            **{m: np.stack(v).astype(np.float32) for m, v in feats.items()}}
