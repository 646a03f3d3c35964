"""VGGSound and its "-S" subset (tasks 5-7 of the paper: text-audio, text-video, audio-video)."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from cmcl.corpora import CorpusInfo, Sample, register_adapter
from cmcl.corpora.media import Reader, audio_track_wav, need, stream, take_options

TEMPLATES = ["{}", "a video of {}.", "the sound of {}."]
DEFAULTS = {"classes": None, "max_classes": None, "per_class": None, "max_train": None,
            "max_test": None, "seed": 0, "skip_missing": False, "audio_rate": 16000,
            "audio_channels": 1}


def _rows(name: str, meta: Path) -> list[dict]:
    """vggsound.csv rows (ytid, start, label, split); a header line, if any, is skipped."""
    with open(meta, newline="", encoding="utf-8") as f:
        raw = [r for r in csv.reader(f) if r]
    if raw and (len(raw[0]) < 2 or not raw[0][1].strip().isdigit()):
        raw = raw[1:]
    rows = []
    for i, r in enumerate(raw, 1):
        if len(r) != 4 or not r[1].strip().isdigit():
            raise ValueError(f"corpus '{name}': {meta}: row {i}: expected ytid,start_sec,label,"
                             f"split, got {r}")
        sid = f"{r[0].strip()}_{int(r[1]):06d}"
        rows.append({"id": sid, "label": r[2].strip(), "split": r[3].strip(), "row": i})
    return rows


def _subset(rows: list[dict], opts: dict, rng: np.random.Generator) -> list[dict]:
    """The "-S" selection: classes, then a per-class cap, then split caps (csv order kept)."""
    names = sorted({r["label"] for r in rows})
    if opts["classes"] is not None:
        unknown = sorted(set(opts["classes"]) - set(names))
        if unknown:
            raise ValueError(f"option classes: {unknown} are not labels of vggsound.csv")
        names = [c for c in names if c in set(opts["classes"])]
    if opts["max_classes"] is not None and len(names) > opts["max_classes"]:
        names = sorted(rng.choice(names, opts["max_classes"], replace=False).tolist())
    keep = set(names)
    rows = [r for r in rows if r["label"] in keep]
    if opts["per_class"] is not None:
        by: dict[tuple, list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            by[(r["split"], r["label"])].append(i)
        chosen = {i for k in sorted(by) for i in rng.permutation(by[k])[: opts["per_class"]]}
        rows = [r for i, r in enumerate(rows) if i in chosen]
    for split in ("train", "test"):
        cap = opts[f"max_{split}"]
        if cap is not None:
            idx = [i for i, r in enumerate(rows) if r["split"] == split][cap:]
            drop = set(idx)
            rows = [r for i, r in enumerate(rows) if i not in drop]
    return rows


@register_adapter("vggsound", options=DEFAULTS)
def vggsound(name: str, path: Path, **options):
    """VGGSound clips (10 s YouTube videos with sound, 309 classes) or a seeded subset of them.

    Layout (corpus folder, e.g. data/raw/vggsound)::

        vggsound.csv                       ytid,start_sec,label,split (no header; test|train)
        video/<ytid>_<start_sec:06d>.mp4   video with its audio track

    Obtain: the metadata from https://www.robots.ox.ac.uk/~vgg/data/vggsound/ ; the clips are
    YouTube videos you download and cut yourself (or a mirror such as the Hugging Face dataset
    Loie/VGGSound that the DNS authors used). Downloads are always partial, so
    `skip_missing: true` drops rows whose video is absent (logged) instead of failing.

    "-S" subset options (applied in this order, all seeded by `seed`): `classes` (list of label
    names to keep), `max_classes` (random sample of that many classes), `per_class` (random
    cap per class and split), `max_train`/`max_test` (first N rows of the split in csv order;
    the DNS authors' VGGSound-S is `max_train: 10000, max_test: 2000`).
    Audio: the clip's audio track is decoded with PyAV and stored as 16-bit WAV at
    `audio_rate` Hz (default 16000; null keeps the source rate) with `audio_channels`
    (default 1; null keeps the source layout): the encoders then read plain WAV, and the
    video payload stays the untouched .mp4. `verify`, `on_error` as for every adapter.
    Sample: id = `<ytid>_<start:06d>`, label = index into the sorted kept class names,
    modalities video, audio, text (the label name).
    """
    opts = take_options(name, "vggsound", options)
    reader = Reader(name, path, opts["verify"])
    rows = _rows(name, need(name, path / "vggsound.csv"))
    if opts["skip_missing"]:
        rows = [r for r in rows if (path / "video" / f"{r['id']}.mp4").is_file()]
    try:
        rows = _subset(rows, opts, np.random.default_rng(opts["seed"]))
    except ValueError as e:
        raise ValueError(f"corpus '{name}': {e}") from None
    classes = sorted({r["label"] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    info = CorpusInfo(name, {"video": "file", "audio": "file", "text": "inline"}, classes,
                      TEMPLATES)

    def build(r: dict) -> Sample:
        sid = r["id"]
        s = Sample(sid, r["split"], index[r["label"]])
        rel = Path("video") / f"{sid}.mp4"
        s.data["video"] = reader.read(sid, "video", rel)
        try:
            wav = audio_track_wav(s.data["video"][1], opts["audio_rate"], opts["audio_channels"])
        except ImportError:
            raise
        except Exception as e:  # PyAV raises its own error types
            raise reader.error(sid, f"audio track of {path / rel} is unreadable ({e})") from None
        s.data["audio"] = ("wav", wav)
        s.data["text"] = ("txt", TEMPLATES[0].format(r["label"]))
        return s

    return info, stream(rows, build, opts["on_error"], lambda r: r["split"],
                        lambda r: r["id"], f"corpus '{name}' (vggsound.csv)")
