"""The generic corpus layout: a folder with a manifest and the files it names.

    <corpus>/manifest.jsonl | manifest.csv | manifest.parquet
        one row per sample: id, split, optional label, one column per modality
    <corpus>/corpus.json    (optional) {"modalities": {"text": "inline", "image": "file"},
                                        "classes": ["zero", ...], "templates": ["a {}", ...]}

Without corpus.json, a column named `text` holds inline text and every other modality column
a path relative to the corpus folder; the modalities are the columns of all rows together. An
empty cell, or a key a JSONL row leaves out, means the sample lacks that modality.
A CSV is read as text, never type-inferred: ids `004` and `4` stay two ids, `007.png` keeps
its zeros.

Every row's split is exactly `train` or `test` (no other name, no other case: a row of split
`Train` or `val` stops the job naming the manifest and the row, rather than being left out).

Ids are strings compared exactly; they must be unique in the manifest, also once made
tar-safe (characters outside [A-Za-z0-9_+-] become '_', so `x.1` and `x_1` collide within a
split), and no id may sit in two splits (train/test overlap). Any of these stops the job with
an error naming the manifest and the rows (`on_error: skip` does not apply: it is the corpus,
not a sample, that is inconsistent).

Labels (the class index of the sample; an empty cell means no label):
- an integer (JSON/Parquet number, or an integral float such as 3.0) is the class index;
- a string is first looked up as a class name in corpus.json's `classes` ("cat" -> the index
  of "cat"; names and labels compare in Unicode NFC, so a decomposed "ü" matches); only
  when it is no class name (or no `classes` are declared) may it be an integer written in
  decimal ("3" -> index 3, as CSV cells are strings);
- booleans, fractional numbers (1.9), NaN and any other string are refused, naming the
  manifest, the sample and the allowed class names. Indices must lie in 0..len(classes)-1.
A task's samples are all labelled or all unlabelled; sharding refuses a mix (cmcl.shards).
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cmcl.corpora import (
    TEXT_MODALITIES,
    CorpusInfo,
    Sample,
    class_names,
    disjoint_splits,
    nfc,
    register_adapter,
)
from cmcl.corpora.media import Reader, SampleError, stream, take_options
from cmcl.tario import tar_key

RESERVED = ("id", "split", "label")
SPLITS = ("train", "test")  # the splits the pipeline shards; any other value is a typo
INTEGER = re.compile(r"[0-9]+")  # decimal digits only: "+3", " 3", "3.0", "1e2" are no index


def manifest_file(path: Path) -> Path:
    """The manifest of a corpus folder: .jsonl, else .csv, else .parquet."""
    for name in ("manifest.jsonl", "manifest.csv", "manifest.parquet"):
        if (path / name).exists():
            return path / name
    raise FileNotFoundError(f"{path}: no manifest.jsonl, manifest.csv or manifest.parquet")


def utf8_text(f: Path) -> str:
    """A text file's contents; bytes that are not UTF-8 are named by line and column."""
    data = f.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError(f"{f}:{line}: not UTF-8 text (byte {data[e.start]:#04x} at column "
                         f"{col}); save the manifest as UTF-8") from None


def read_rows(f: Path) -> tuple[list[dict], list[str]]:
    """Rows of a manifest file and where each is ('line 3', 'row 2'), for error messages."""
    if f.name.endswith(".jsonl"):
        rows, where = [], []
        for i, line in enumerate(utf8_text(f).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{f}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{f}:{i}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
            where.append(f"line {i}")
        return rows, where
    if f.name.endswith(".csv"):
        # every column as text: type inference turns id 004 into 4 and label "true" into a bool
        names = next(csv.reader(utf8_text(f).splitlines()), [])
        table = pacsv.read_csv(f, convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in names}))
        rows = table.to_pylist()
        return rows, [f"line {i + 2}" for i in range(len(rows))]  # line 1 is the header
    rows = pq.read_table(f).to_pylist()
    return rows, [f"row {i + 1}" for i in range(len(rows))]


def read_manifest(path: Path) -> list[dict]:
    """Rows of manifest.jsonl/.csv/.parquet as dicts; errors name the file and line."""
    return read_rows(manifest_file(path))[0]


def sample_id(value, f: Path, where: str) -> str:
    """A row's id as a string: strings as they are, integers in decimal; nothing else."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{f}: {where}: id {value!r} is not a non-empty string (or integer)")


def check_splits(f: Path, rows: list[dict], where: list[str]) -> None:
    """Every row's split is one of SPLITS, exactly: another value (`Train`, `val`) would drop
    the row from every task without a word."""
    bad = [f"{w} (id {r.get('id')!r}): split {r.get('split')!r}"
           for r, w in zip(rows, where, strict=True)
           if not (isinstance(r.get("split"), str) and r["split"] in SPLITS)]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(f"{f}: {len(bad)} row(s) have a split that is not one of "
                         f"{list(SPLITS)} (exactly, case included): {', '.join(bad[:5])}{more}")


def check_ids(f: Path, rows: list[dict], where: list[str]) -> list[str]:
    """The rows' ids; a duplicate id, a tar-key collision in a split or an id in two splits
    stops here, naming the manifest and both rows."""
    ids = [sample_id(r.get("id"), f, w) for r, w in zip(rows, where, strict=True)]
    first: dict[str, int] = {}
    keys: dict[tuple[str, str], int] = {}
    by_split: dict[str, list[str]] = {}
    for i, (sid, row) in enumerate(zip(ids, rows, strict=True)):
        split = str(row.get("split"))
        j = first.get(sid)
        if j is not None and str(rows[j].get("split")) == split:
            raise ValueError(f"{f}: {where[j]} and {where[i]} have the same id {sid!r} "
                             f"(split '{split}'); ids must be unique")
        first.setdefault(sid, i)
        by_split.setdefault(split, []).append(sid)
        k = keys.setdefault((split, tar_key(sid)), i)
        if k != i and ids[k] != sid:
            raise ValueError(f"{f}: {where[k]} (id {ids[k]!r}) and {where[i]} (id {sid!r}) "
                             f"collide as the tar key {tar_key(sid)!r} in split '{split}' "
                             "(characters outside [A-Za-z0-9_+-] become '_'); rename one")
    disjoint_splits(by_split, str(f))
    return ids


def label_index(value, classes: list[str] | None, f: Path, sid: str) -> int | None:
    """A manifest label as a class index (rule in the module docstring); None if empty."""
    if value is None or value == "":
        return None
    n = len(classes) if classes else None
    allowed = (f"a class name of {classes} or an index 0..{n - 1}" if n else
               "an integer class index (corpus.json declares no `classes` to name them)")
    if isinstance(value, str):
        if classes and nfc(value) in classes:  # classes are NFC (class_names)
            return classes.index(nfc(value))
        if not INTEGER.fullmatch(value):
            raise ValueError(f"{f}: sample '{sid}': label {value!r} is not {allowed}")
        label = int(value)
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{f}: sample '{sid}': label {value!r} ({type(value).__name__}) is "
                         f"not {allowed}")
    elif isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ValueError(f"{f}: sample '{sid}': label {value!r} is not integral; expected "
                         f"{allowed}")
    else:
        label = int(value)
    if n is not None and not 0 <= label < n:
        raise ValueError(f"{f}: sample '{sid}': label {label} not in the class list "
                         f"(0..{n - 1}: {classes})")
    if label < 0:
        raise ValueError(f"{f}: sample '{sid}': label {label} is negative")
    return label


@register_adapter("generic")
def generic(name: str, path: Path, **options):
    """Options: `on_error: raise|skip` (skip lists bad samples in each task's rejected.jsonl);
    `verify` (default true): decode every image, audio, video and .npy file of the task's
    modalities once while sharding, so a corrupt or truncated one is named (corpus, sample,
    file) or skipped there; files of modalities the task does not pair are not read.
    `verify: false` copies the bytes unread, faster for trusted data; a bad file then only
    fails in `embed`, named by its shard member, and cannot be skipped."""

    opts = take_options(name, "generic", options)
    f = manifest_file(path)
    rows, where = read_rows(f)
    if not rows:
        raise ValueError(f"corpus '{name}': manifest in {path} has no rows")
    meta_file = path / "corpus.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    # every row's keys: a JSONL row may leave out a modality the others have
    columns = [c for c in dict.fromkeys(k for r in rows for k in r) if c not in RESERVED]
    kinds = meta.get("modalities") or {
        c: "inline" if c in TEXT_MODALITIES else "file" for c in columns
    }
    for key in ("id", "split"):
        if not any(key in r for r in rows):
            raise ValueError(f"corpus '{name}': manifest in {path} lacks the column '{key}'")
    check_splits(f, rows, where)
    ids = check_ids(f, rows, where)
    info = CorpusInfo(name, kinds, class_names(meta.get("classes"), str(meta_file)),
                      meta.get("templates"))
    reader = Reader(name, path, opts["verify"])

    def build(item: tuple[str, dict], wanted: frozenset[str] | None = None) -> Sample:
        sid, row = item
        try:
            s = Sample(sid, str(row["split"]), label_index(row.get("label"), info.classes, f,
                                                           sid))
        except ValueError as e:
            raise SampleError(str(e), sid) from None
        for mod, kind in kinds.items():
            value = row.get(mod)
            if value is None or value == "" or (wanted is not None and mod not in wanted):
                continue
            if kind == "inline":
                s.data[mod] = ("txt", str(value))
                continue
            s.data[mod] = reader.read(sid, mod, str(value))
        return s

    return info, stream(list(zip(ids, rows, strict=True)), build, opts["on_error"],
                        lambda item: str(item[1]["split"]))
