"""Import the DNS authors' pre-extracted frozen-encoder features (HDF5) into the pipeline.

The paper's encoders (ImageBind-Huge, LanguageBind, UniBind) are large models; users extract
features once with the authors' code and bring the files. Their layout (`features_storage/`)::

    <dataset>_<split>_<encoder>.h5   one HDF5 dataset per sample id: float [n_modalities, d],
                                     rows in the dataset's modality order (authors' order:
                                     vision, text, audio, thermal, depth, imu, video, tactile)
    <dataset>_class_<encoder>.h5     one HDF5 dataset per class name: float [d] (text side)

e.g. ucf101_train_imagebind.h5 (rows text, video), vggsound_s_test_languagebind.h5 (rows
text, audio, video). Sample ids may be wrapped as "tensor(...)" (an artefact of the authors'
extraction); the wrapper is removed. The files carry no labels: a task with classes needs
`labels` (a CSV mapping id -> class name) or `label_regex` (class name from the id).

Two routes, same data:
- `import_features` / `import_task` write the project's feature shards directly, in exactly
  the format `cmcl.embed.embed_split` writes, so train/evaluate consume them unchanged;
- the `features_h5` corpus adapter yields samples whose payloads are `.npy` rows, for the
  shard stage (an embed step must then pass `.npy` payloads through unchanged).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cmcl.corpora import CorpusInfo, Sample, disjoint_splits, register_adapter, resolve_classes
from cmcl.corpora.media import SampleError, iterate, take_options
from cmcl.io import DIGESTS, atomic_dir, record_digests, save_tensors, write_json
from cmcl.shard_writer import write_shards
from cmcl.tario import KEY_OK, npy_bytes

DEFAULTS: dict[str, Any] = {
    "encoder": None, "dataset": None, "modalities": None, "splits": ["train", "test"],
    "file": "{dataset}_{split}_{encoder}.h5", "class_file": "{dataset}_class_{encoder}.h5",
    "labels": None, "label_regex": None}
TENSOR_WRAP = re.compile(r"^tensor\((.*)\)$")


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("reading HDF5 feature files needs the package h5py") from None
    return h5py


def read_h5(h5_path: str | Path) -> Iterator[tuple[str, Any]]:
    """(sample id, stored array) per HDF5 entry, sorted by id; `check_row` validates each."""
    h5py = _h5py()
    h5_path = Path(h5_path)
    if not h5_path.is_file():
        raise FileNotFoundError(f"{h5_path}: feature file not found")
    with h5py.File(h5_path, "r") as f:
        for key in sorted(f.keys()):
            item = f[key]
            yield TENSOR_WRAP.sub(r"\1", key), item[()] if isinstance(item, h5py.Dataset) else None


def h5_ids(h5_path: Path) -> list[str]:
    """The sample ids of an HDF5 feature file, without reading the arrays."""
    with _h5py().File(h5_path, "r") as f:
        return [TENSOR_WRAP.sub(r"\1", key) for key in f.keys()]


def check_row(where: str, sid: str, x: Any, n_rows: int) -> np.ndarray:
    """float32 [n_rows, d], or a SampleError naming the file and the sample."""
    if x is None:
        raise SampleError(f"{where}: sample '{sid}': an HDF5 group, not an array", sid)
    try:
        x = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise SampleError(f"{where}: sample '{sid}': not a numeric array ({e})", sid) from None
    if x.ndim != 2 or x.shape[0] != n_rows:
        raise SampleError(f"{where}: sample '{sid}': expected [{n_rows}, d] (one row per "
                          f"declared modality), got {list(x.shape)}", sid)
    if not np.isfinite(x).all():
        raise SampleError(f"{where}: sample '{sid}': non-finite feature values", sid)
    return x


def read_class_features(path: str | Path, classes: Sequence[str] | None = None
                        ) -> tuple[list[str], np.ndarray]:
    """(class names, float32 [C, T, d]) from .h5/.hdf5 or .npz (name -> [d] or [T, d]) or .npy.

    Names are sorted (the authors' class order) unless `classes` fixes the order; a .npy holds
    [C, d] or [C, T, d] rows in the order of `classes`, which is then required.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: class feature file not found")
    if path.suffix == ".npy":
        if classes is None:
            raise ValueError(f"{path}: a .npy class feature file needs the class names")
        arr = np.load(path, allow_pickle=False).astype(np.float32)
        if len(arr) != len(classes):
            raise ValueError(f"{path}: {len(arr)} class rows for {len(classes)} classes")
        table = dict(zip(classes, arr, strict=True))
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            table = {k: z[k].astype(np.float32) for k in z.files}
    else:
        with _h5py().File(path, "r") as f:
            table = {TENSOR_WRAP.sub(r"\1", k): np.asarray(f[k][()], np.float32) for k in f}
    names = list(classes) if classes is not None else sorted(table)
    lacking = [c for c in names if c not in table]
    if lacking:
        raise ValueError(f"{path}: no class feature for {lacking[:5]}")
    rows = [table[c].reshape(-1, table[c].shape[-1]) for c in names]
    if len({r.shape for r in rows}) != 1:
        raise ValueError(f"{path}: class features differ in shape")
    return names, np.stack(rows)


def read_labels(spec: str | Path | Mapping, root: Path = Path(".")) -> dict[str, str]:
    """id -> class name from a CSV: a path (columns id,label) or {file, id, label} columns."""
    if isinstance(spec, Mapping) and "file" not in spec:
        return {str(k): str(v) for k, v in spec.items()}
    spec = {"file": spec} if not isinstance(spec, Mapping) else spec
    f = root / spec["file"]
    id_col, label_col = spec.get("id", "id"), spec.get("label", "label")
    if not f.is_file():
        raise FileNotFoundError(f"{f}: labels file not found")
    with open(f, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not {id_col, label_col} <= set(reader.fieldnames or ()):
            raise ValueError(f"{f}: needs the columns '{id_col}' and '{label_col}'")
        return {r[id_col].strip(): r[label_col].strip() for r in reader}


def _labeler(where: str, classes: list[str], labels: Mapping[str, str] | None,
             regex: str | None):
    """sid -> class index, or SampleError naming the sample; None when no labels exist."""
    if labels is None and regex is None:
        return None
    index = {c: i for i, c in enumerate(classes)}
    pattern = re.compile(regex) if regex else None
    if pattern is not None and not pattern.groups:
        raise ValueError(f"{where}: label_regex {regex!r} needs a capture group (the class name)")

    def label(sid: str) -> int:
        if pattern is not None:
            m = pattern.search(sid)
            name = (m.groupdict().get("label") or m.group(1)) if m else None
        else:
            name = labels.get(sid)
        if name is None:
            raise SampleError(f"{where}: sample '{sid}': no label (not in the labels file / "
                              "label_regex does not match)", sid)
        if name not in index:
            raise SampleError(f"{where}: sample '{sid}': label {name!r} not in the class list", sid)
        return index[name]

    return label


def import_features(h5_path: str | Path, modalities: Sequence[str], out_dir: str | Path,
                    split: str, task_name: str, class_features: str | Path | None = None, *,
                    pair: Sequence[str] | None = None, labels: Mapping | str | Path | None = None,
                    label_regex: str | None = None, classes: Sequence[str] | None = None,
                    keep_classes: Sequence[int] | None = None, max_per_class: int | None = None,
                    encoder: str = "precomputed", dtype: str = "float32",
                    samples_per_shard: int | None = None, corpus: str | None = None) -> int:
    """Write one task split of an authors' HDF5 file as feature shards (as embed_split does).

    `modalities` names the rows of every array; `pair` picks the task's two (default: all).
    Labels come from `labels`/`label_regex`; class names from the class feature file (sorted),
    else `classes`, else the sorted label names. `keep_classes` (indices) and `max_per_class`
    select samples like the shard stage's `classes` and `max_per_class`. Atomic: on any error
    `out_dir` is left as it was.
    """
    h5_path, pair = Path(h5_path), list(pair or modalities)
    where = (f"corpus '{corpus}' " if corpus else "") + f"task '{task_name}': {h5_path}"
    unknown = [m for m in pair if m not in modalities]
    if unknown or len(set(modalities)) != len(modalities):
        raise ValueError(f"{where}: modalities {list(modalities)} (rows of the file) must be "
                         f"distinct and include the task's {pair}")
    if labels is not None and (not isinstance(labels, Mapping) or "file" in labels):
        labels = read_labels(labels)
    prompts = None
    if class_features is not None:
        classes, prompts = read_class_features(class_features, classes)
        if labels is None and label_regex is None:
            raise ValueError(f"{where}: class features given but no labels or label_regex to "
                             "assign each sample its class")
    elif classes is None and labels is not None and label_regex is None:
        classes = sorted(set(labels.values()))
    if classes is None and label_regex is not None:
        raise ValueError(f"{where}: label_regex needs the class names (class features or "
                         "`classes`)")
    label_of = _labeler(where, list(classes or []), labels, label_regex)
    rows = [list(modalities).index(m) for m in pair]
    keep = set(resolve_classes(keep_classes, classes if label_of else None,
                               f"{where}: tasks.{task_name}.classes")) if keep_classes else None
    kept: list[tuple[str, int | None, np.ndarray]] = []
    counts: dict[int | None, int] = {}
    for sid, raw in read_h5(h5_path):
        x = check_row(where, sid, raw, len(modalities))
        label = label_of(sid) if label_of else None
        if keep is not None and label not in keep:
            continue
        if max_per_class is not None and counts.get(label, 0) >= max_per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        kept.append((sid, label, x[rows].astype(dtype)))
    if not kept:
        raise ValueError(f"{where}: split '{split}' has no sample to import")
    keys = [KEY_OK.sub("_", sid) for sid, _, _ in kept]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{where}: sample ids collide once made tar-safe ([A-Za-z0-9_+-])")

    def records():
        for key, (sid, label, x) in zip(keys, kept, strict=True):
            rec = {"__key__": key, "json": {"id": sid, "label": label}}
            if label is not None:
                rec["cls"] = label
            rec.update({f"{m}.npy": npy_bytes(x[i]) for i, m in enumerate(pair)})
            yield rec

    with_classes = label_of is not None
    meta = {"task": task_name, "split": split, "modalities": pair, "count": len(kept),
            "classes": list(classes) if with_classes else None,
            "templates": ["{}"] if with_classes else None,
            "encoders": {m: encoder for m in pair},
            "dims": {m: int(kept[0][2].shape[1]) for m in pair}, "dtype": dtype}
    with atomic_dir(out_dir) as tmp:
        write_shards(tmp, records(), samples_per_shard or len(kept), split=split)
        if prompts is not None:
            import torch

            save_tensors(tmp / "classes.safetensors",
                         {"prompts": torch.from_numpy(prompts),
                          "class_ids": torch.arange(len(prompts))})
        write_json(tmp / "meta.json", {**meta, DIGESTS: record_digests(tmp)})
    return len(kept)


def resolve(name: str, path: Path, options: Mapping) -> dict:
    """The adapter's options with dataset/encoder/labels filled in; errors name the corpus."""
    opts = take_options(name, "features_h5", options)
    mods = opts["modalities"]
    if not opts["encoder"] or not isinstance(mods, list) or len(mods) < 2:
        raise ValueError(f"corpus '{name}': adapter features_h5 needs the options `encoder` "
                         "(e.g. imagebind) and `modalities` (row order, e.g. [text, video])")
    opts["dataset"] = opts["dataset"] or name
    if opts["labels"] is not None:
        opts["labels"] = read_labels(opts["labels"], path)
    cf = path / opts["class_file"].format(dataset=opts["dataset"], encoder=opts["encoder"])
    if "class_file" in options and not cf.is_file():
        raise FileNotFoundError(f"corpus '{name}': class feature file {cf} does not exist")
    labelled = opts["labels"] is not None or opts["label_regex"] is not None
    opts["class_path"] = cf if cf.is_file() and labelled else None
    return opts


def h5_file(path: Path, opts: Mapping, split: str) -> Path:
    return path / opts["file"].format(dataset=opts["dataset"], split=split,
                                      encoder=opts["encoder"])


def import_task(task: Mapping, corpus: Mapping, split: str, out_dir: str | Path,
                max_per_class: int | None = None) -> int:
    """One task split from a params corpus entry (adapter features_h5) to feature shards."""
    path, name = Path(corpus["path"]), task["corpus"]
    opts = resolve(name, path, corpus.get("options") or {})
    files = {s: h5_file(path, opts, s) for s in opts["splits"]}
    disjoint_splits({s: h5_ids(f) for s, f in files.items() if f.is_file()},
                    f"corpus '{name}' ({', '.join(str(f) for f in files.values())})")
    return import_features(
        h5_file(path, opts, split), opts["modalities"], out_dir, split, task["name"],
        opts["class_path"], pair=task["modalities"], labels=opts["labels"],
        label_regex=opts["label_regex"], keep_classes=task.get("classes"),
        max_per_class=max_per_class, encoder=f"precomputed:{opts['encoder']}", corpus=name)


@register_adapter("features_h5", options=DEFAULTS)
def features_h5(name: str, path: Path, **options):
    """Samples from the authors' HDF5 files: one `.npy` payload (a [d] row) per modality.

    Layout (corpus folder, e.g. data/raw/ucf101): the files named by `file` and `class_file`
    (defaults "{dataset}_{split}_{encoder}.h5", "{dataset}_class_{encoder}.h5"; `dataset`
    defaults to the corpus name). Options: `encoder` and `modalities` (required), `splits`
    (default [train, test]), `labels` (CSV path, or {file, id, label} column names, relative
    to the corpus folder), `label_regex` (group 1 or `label` = class name), `on_error`.
    Class names: the class file's (sorted) when labels are configured, else the labels' names.
    """
    opts = resolve(name, path, options)
    classes = None
    if opts["class_path"] is not None:
        classes = read_class_features(opts["class_path"])[0]
    elif opts["labels"] is not None:
        classes = sorted(set(opts["labels"].values()))
    if classes is None and opts["label_regex"] is not None:
        raise ValueError(f"corpus '{name}': label_regex needs the class names: no class feature "
                         f"file {opts['class_file']!r} in {path}")
    label_of = _labeler(f"corpus '{name}'", classes or [], opts["labels"], opts["label_regex"])
    files = {s: h5_file(path, opts, s) for s in opts["splits"]}
    for f in files.values():
        if not f.is_file():
            raise FileNotFoundError(f"corpus '{name}': feature file {f} does not exist")
    disjoint_splits({s: h5_ids(f) for s, f in files.items()},
                    f"corpus '{name}' ({', '.join(str(f) for f in files.values())})")

    def rows(split: str | None) -> Iterator[tuple]:
        for s, f in files.items():
            if split is None or s == split:  # never open the other splits' files
                yield from ((s, f, sid, raw) for sid, raw in read_h5(f))

    def build(row) -> Sample:
        split, f, sid, raw = row
        x = check_row(f"corpus '{name}': {f}", sid, raw, len(opts["modalities"]))
        s = Sample(sid, split, label_of(sid) if label_of else None)
        s.data = {m: ("npy", npy_bytes(x[i])) for i, m in enumerate(opts["modalities"])}
        return s

    info = CorpusInfo(name, {m: "file" for m in opts["modalities"]}, classes,
                      ["{}"] if classes else None)

    def samples(split: str | None = None, workers: int = 1) -> Iterator[Sample]:
        return iterate(rows(split), build, opts["on_error"], workers)

    return info, samples
