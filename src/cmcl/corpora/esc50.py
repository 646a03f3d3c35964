"""ESC-50 environmental sounds (task 2 of the paper: text-audio), official GitHub release."""

from __future__ import annotations

import csv
from pathlib import Path

from cmcl.corpora import CorpusInfo, Sample, register_adapter
from cmcl.corpora.media import Reader, need, readable, stream, take_options

TEMPLATES = ["{}", "the sound of {}.", "a recording of {}."]


@register_adapter("esc50", options={"test_fold": 5})
def esc50(name: str, path: Path, **options):
    """ESC-50: 2,000 five-second clips, 50 classes, 5 folds; one fold is the test split.

    Layout (corpus folder, e.g. data/raw/esc50)::

        audio/<fold>-<src>-<take>-<target>.wav
        meta/esc50.csv     header: filename,fold,target,category,esc10,src_file,take

    Obtain: https://github.com/karolpiczak/ESC-50 (download the repository archive and unpack
    it so that audio/ and meta/ are directly in the corpus folder).

    Options: `test_fold` 1..5 (default 5: folds 1-4 train, 5 test), `verify`, `on_error`.
    Sample: id = file stem, label = `target`, modalities audio (.wav bytes) and text (the
    category made readable, e.g. "crying baby"). Classes are the categories in target order.
    """
    opts = take_options(name, "esc50", options)
    meta = need(name, path / "meta" / "esc50.csv")
    with open(meta, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = {"filename", "fold", "target", "category"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"corpus '{name}': {meta} lacks the column(s) {sorted(missing)}")
    names: dict[int, str] = {}
    for r in rows:
        if r["target"].strip().isdigit():
            names.setdefault(int(r["target"]), r["category"])
    gaps = [t for t in range(max(names, default=-1) + 1) if t not in names]
    if not names or gaps:
        raise ValueError(f"corpus '{name}': {meta}: targets must run 0..K-1; no category for "
                         f"target(s) {gaps}")
    classes = [readable(names[t]) for t in range(len(names))]
    info = CorpusInfo(name, {"audio": "file", "text": "inline"}, classes, TEMPLATES)
    reader = Reader(name, path, opts["verify"])

    def split_of(r: dict) -> str:
        fold = r["fold"].strip()
        return "test" if fold.isdigit() and int(fold) == opts["test_fold"] else "train"

    def build(r: dict) -> Sample:
        sid = Path(r["filename"]).stem
        target = r["target"].strip()
        if not target.isdigit() or names.get(int(target)) != r["category"]:
            raise reader.error(sid, f"label {target!r} ({r['category']!r}) in {meta} is not in "
                               "the class list")
        fold = r["fold"].strip()
        if not fold.isdigit():
            raise reader.error(sid, f"fold {fold!r} in {meta} is not an integer")
        split = split_of(r)
        s = Sample(sid, split, int(target))
        s.data["audio"] = reader.read(sid, "audio", Path("audio") / r["filename"])
        s.data["text"] = ("txt", TEMPLATES[0].format(classes[int(target)]))
        return s

    return info, stream(rows, build, opts["on_error"], split_of,
                        lambda r: Path(r["filename"]).stem, f"corpus '{name}' ({meta})")
