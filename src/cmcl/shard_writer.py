"""Writing shard folders (tars + sizes.json + index.parquet) from records: apart from
cmcl.shards, which reads corpora, so an adapter that writes shards (features_h5) does not
import the corpus registry it belongs to."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from cmcl import tario
from cmcl.io import atomic_path, write_json


def write_shards(out_dir: str | Path, records: Iterable[dict], samples_per_shard: int,
                 prefix: str = "", max_shard_bytes: int | None = None,
                 split: str | None = None, where: str | None = None) -> dict[str, int]:
    """Write WebDataset tars `<prefix>NNNNNN.tar` + sizes.json + index.parquet into `out_dir`.

    A tar rolls over after `samples_per_shard` samples or before the sample that would make it
    exceed `max_shard_bytes` (a single larger sample gets a tar of its own). The bytes depend
    only on the records (mtime 0), so the same input gives byte-identical shards.
    Callers wrap this in `atomic_dir`, so the folder appears only once complete.
    Two records with one `__key__` (a duplicate id, or ids equal once made tar-safe) are an
    error naming both ids and `where`: a tar reader would merge or confuse them.
    """
    out_dir = Path(out_dir)
    sizes: dict[str, int] = {}
    index: list[tuple] = []
    tar: tario.TarOut | None = None
    name = ""
    seen: dict[str, str | None] = {}  # key -> corpus id of the record that took it
    for rec in records:
        key, prov = rec["__key__"], _provenance(rec)
        sid = key if prov[0] is None else prov[0]
        if key in seen:
            first = seen[key]
            what = (f"sample id {sid!r} appears twice" if first == sid else
                    f"sample ids {first!r} and {sid!r} collide as the tar key {key!r} "
                    "(characters outside [A-Za-z0-9_+-] become '_')")
            raise ValueError(f"{where or out_dir}: {what}; ids must be unique (also once "
                             "made tar-safe)")
        seen[key] = sid
        chunks = tario.record_bytes(tario.encode(rec))
        nbytes = sum(len(c) for c in chunks)
        full = tar is not None and (
            sizes[name] == samples_per_shard
            or (max_shard_bytes is not None
                and tario.closed_size(tar.size + nbytes) > max_shard_bytes))
        if tar is None or full:
            if tar is not None:
                tar.close()
            name = f"{prefix}{len(sizes):06d}.tar"
            tar, sizes[name] = tario.TarOut(out_dir / name), 0
        offset, span = tar.add(chunks)
        sizes[name] += 1
        index.append((key, *prov, name, offset, span))
    if tar is not None:
        tar.close()
    write_json(out_dir / "sizes.json", sizes)
    write_index(out_dir, index, split)
    return sizes


def _provenance(rec: Mapping) -> tuple[str | None, int | None]:
    """(corpus id(s), label) of a record, from its json member (dict or encoded bytes)."""
    meta = rec.get("json")
    if isinstance(meta, bytes | str):
        meta = json.loads(meta)
    meta = meta if isinstance(meta, dict) else {}
    label = meta.get("label", rec.get("cls"))
    return (None if meta.get("id") is None else str(meta["id"]),
            None if label is None else int(label))


def write_index(out_dir: Path, rows: list[tuple], split: str | None = None) -> None:
    """index.parquet, one row per sample: key, id, split, label, shard, byte offset and size
    of the sample's members (random access, streaming splits and audits without untarring)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = list(zip(*rows, strict=True)) if rows else [()] * 6
    schema = pa.schema([("key", pa.string()), ("id", pa.string()), ("split", pa.string()),
                        ("label", pa.int64()), ("shard", pa.string()), ("offset", pa.int64()),
                        ("nbytes", pa.int64())])
    table = pa.table([list(cols[0]), list(cols[1]), [split] * len(rows), list(cols[2]),
                      list(cols[3]), list(cols[4]), list(cols[5])], schema=schema)
    with atomic_path(out_dir / "index.parquet") as tmp:
        pq.write_table(table, tmp)
