"""Test data builders shared by every test directory: the repository root, a tiny synthetic
corpus in the generic layout, and that corpus sharded and embedded per task."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["zero", "one", "two", "three"]


def make_corpus(path: Path, n_per_class: int = 6, seed: int = 0) -> Path:
    """Images (PNG), MFCC-like npy sequences and inline captions for 4 classes."""
    rng = np.random.default_rng(seed)
    (path / "img").mkdir(parents=True)
    (path / "aud").mkdir()
    rows = []
    for c in range(len(NAMES)):
        for i in range(n_per_class):
            split = "test" if i < 2 else "train"
            img = np.clip(rng.normal(c * 50, 20, (8, 8)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img, mode="L").save(buf, format="PNG")
            (path / f"img/{c}_{i}.png").write_bytes(buf.getvalue())
            rows.append({"id": f"i{c}{i}", "split": split, "label": c, "image": f"img/{c}_{i}.png",
                         "text": f"the digit {NAMES[c]}"})
            buf = io.BytesIO()
            np.save(buf, rng.normal(c * 10, 5, (5 + i, 13)).astype(np.float32))
            (path / f"aud/{c}_{i}.npy").write_bytes(buf.getvalue())
            rows.append({"id": f"a{c}{i}", "split": split, "label": c, "audio": f"aud/{c}_{i}.npy",
                         "text": f"a spoken {NAMES[c]}"})
    (path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "corpus.json").write_text(json.dumps({
        "modalities": {"text": "inline", "image": "file", "audio": "file"},
        "classes": NAMES, "templates": ["the digit {}", "{}"]}))
    return path


def embedded_tasks(d: Path, tasks: dict, n_per_class: int = 12) -> Path:
    """A make_corpus corpus under d, each task's splits sharded to d/s/ and embedded (pixels,
    mfcc_stats) to d/features/<task>/<split>: what sweeps and tuning read. Returns the corpus."""
    from cmcl.embed import embed_split
    from cmcl.shards import shard_task

    corpus = make_corpus(d / "corpus", n_per_class=n_per_class)
    for name, t in tasks.items():
        for split in ("train", "test"):
            shard_task({"name": name, **t}, {"path": str(corpus)}, split, d / f"s/{name}/{split}")
            embed_split(d / f"s/{name}/{split}", d / f"features/{name}/{split}",
                        {"image": "pixels", "audio": "mfcc_stats"})
    return corpus
