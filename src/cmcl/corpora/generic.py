"""The generic corpus layout: a folder with a manifest and the files it names.

    <corpus>/manifest.jsonl | manifest.csv | manifest.parquet
        one row per sample: id, split, optional label, one column per modality
    <corpus>/corpus.json    (optional) {"modalities": {"text": "inline", "image": "file"},
                                        "classes": ["zero", ...], "templates": ["a {}", ...]}

Without corpus.json, a column named `text` holds inline text and every other modality column
a path relative to the corpus folder. An empty cell means the sample lacks that modality.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cmcl.corpora import TEXT_MODALITIES, CorpusInfo, Sample, register_adapter

RESERVED = ("id", "split", "label")


def read_manifest(path: Path) -> list[dict]:
    """Rows of manifest.jsonl/.csv/.parquet as dicts; errors name the file and line."""
    for name in ("manifest.jsonl", "manifest.csv", "manifest.parquet"):
        f = path / name
        if not f.exists():
            continue
        if name.endswith(".jsonl"):
            rows = []
            for i, line in enumerate(f.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{f}:{i}: not valid JSON ({e.msg})") from None
            return rows
        table = pacsv.read_csv(f) if name.endswith(".csv") else pq.read_table(f)
        return table.to_pylist()
    raise FileNotFoundError(f"{path}: no manifest.jsonl, manifest.csv or manifest.parquet")


def _label(value, f: Path, sid: str, n_classes: int | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        label = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{f}: sample '{sid}': label {value!r} is not an integer") from None
    if n_classes is not None and not 0 <= label < n_classes:
        raise ValueError(f"{f}: sample '{sid}': label {label} not in the class list "
                         f"(0..{n_classes - 1})")
    return label


@register_adapter("generic")
def generic(name: str, path: Path, **options):
    """Options: `on_error: raise|skip` (skip lists bad samples in each task's rejected.jsonl);
    `verify` (default true): decode every image, audio, video and .npy file once while
    sharding, so a corrupt or truncated one is named (corpus, sample, file) or skipped there.
    `verify: false` copies the bytes unread, faster for trusted data; a bad file then only
    fails in `embed`, named by its shard member, and cannot be skipped."""
    from cmcl.corpora.media import Reader, SampleError, stream, take_options

    opts = take_options(name, "generic", options, {})
    rows = read_manifest(path)
    if not rows:
        raise ValueError(f"corpus '{name}': manifest in {path} has no rows")
    meta_file = path / "corpus.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    columns = [c for c in rows[0] if c not in RESERVED]
    kinds = meta.get("modalities") or {
        c: "inline" if c in TEXT_MODALITIES else "file" for c in columns
    }
    for key in ("id", "split"):
        if key not in rows[0]:
            raise ValueError(f"corpus '{name}': manifest in {path} lacks the column '{key}'")
    info = CorpusInfo(name, kinds, meta.get("classes"), meta.get("templates"))
    n_classes = len(info.classes) if info.classes else None
    reader = Reader(name, path, opts["verify"])

    def build(row: dict) -> Sample:
        sid = str(row["id"])
        try:
            s = Sample(sid, str(row["split"]), _label(row.get("label"), path, sid, n_classes))
        except ValueError as e:
            raise SampleError(str(e), sid) from None
        for mod, kind in kinds.items():
            value = row.get(mod)
            if value is None or value == "":
                continue
            if kind == "inline":
                s.data[mod] = ("txt", str(value))
                continue
            s.data[mod] = reader.read(sid, mod, str(value))
        return s

    return info, stream(rows, build, opts["on_error"], lambda row: str(row["split"]))

