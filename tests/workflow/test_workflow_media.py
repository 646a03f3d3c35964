"""End to end on real media through the real Snakemake: a generic-layout corpus (CSV manifest,
string labels) of video, audio, image and text files written here, params with
`extends: null`, shard -> embed with a tiny random ImageBind -> a 2-step chain -> report."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers.data import ROOT
from helpers.imagebind import require_imagebind, tiny_imagebind

torch = pytest.importorskip("torch")
av = pytest.importorskip("av")
sf = pytest.importorskip("soundfile")
ib = require_imagebind()


BIN = Path(sys.executable).parent
CLASSES = ["cat", "dog"]


def mp4(level: int, n: int = 8) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as c:
        vs = c.add_stream("mpeg4", rate=4)
        vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p"
        for i in range(n):
            img = np.full((32, 32, 3), (level + 9 * i) % 256, np.uint8)
            c.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(vs.encode())
    return buf.getvalue()


def make_media_corpus(path: Path, per_class: int = 5) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub in ("video", "audio", "image"):
        (path / sub).mkdir(parents=True)
    rows = []
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            sid = f"{name}{i:02d}"
            (path / f"video/{sid}.mp4").write_bytes(mp4(60 * c + 7 * i))
            t = np.arange(16000) / 16000
            wave = 0.3 * np.sin(2 * np.pi * (300 + 400 * c + 20 * i) * t)
            sf.write(path / f"audio/{sid}.wav", wave + 0.01 * rng.standard_normal(len(t)),
                     16000, subtype="PCM_16")
            img = np.clip(rng.normal(90 + 80 * c, 30, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(path / f"image/{sid}.png")
            rows.append({"id": sid, "split": "test" if i < 2 else "train", "label": name,
                         "video": f"video/{sid}.mp4", "audio": f"audio/{sid}.wav",
                         "image": f"image/{sid}.png", "text": f"a {name}, take {i}"})
    with open(path / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (path / "corpus.json").write_text(json.dumps({
        "modalities": {"video": "file", "audio": "file", "image": "file", "text": "inline"},
        "classes": CLASSES, "templates": ["a {}"]}))
    return path


def params(ckpt: str) -> dict:
    spec = f"imagebind:{ckpt}"
    return {
        "extends": None,
        "corpora": {"pets": {"path": "data/raw/pets", "adapter": "generic"}},
        "tasks": {"t1_text_video": {"corpus": "pets", "modalities": ["text", "video"],
                                    "relevance": "label"},
                  "t2_image_audio": {"corpus": "pets", "modalities": ["image", "audio"],
                                     "relevance": "label"}},
        "sequences": {"pets": ["t1_text_video", "t2_image_audio"]},
        "shard": {"samples_per_shard": 4},
        "embed": {"encoders": {m: spec for m in ("text", "video", "image", "audio")},
                  "batch_size": 4},
        "model": {"embed_dim": 8},
        "loss": {},
        "train": {"methods": ["finetune", "dns"], "seeds": [1], "epochs": 1, "batch_size": 4,
                  "lr": 0.01},
        "methods": {"dns": {"threshold_mode": "relative"}},
        "eval": {"ks": [1], "n_subsets": 1, "subset_size": 4},
        "report": {"main_metric": "map", "expected": None},
    }


def test_media_corpus_runs_shard_embed_train_report(tmp_path):
    for name in ("Snakefile", ".gitignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline")
    make_media_corpus(tmp_path / "data/raw/pets")
    ckpt = tiny_imagebind(tmp_path / "tiny.pth")
    (tmp_path / "media.yaml").write_text(yaml.safe_dump(params(str(ckpt)), sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([str(BIN / "snakemake"), "--cores", "2", "--configfile", "media.yaml"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    logs = "".join(f.read_text()[-1500:] for f in (tmp_path / "logs").rglob("*.log")) \
        if p.returncode else ""
    assert p.returncode == 0, p.stderr[-4000:] + logs
    for task, mods in (("t1_text_video", ["text", "video"]), ("t2_image_audio",
                                                              ["image", "audio"])):
        for split, n in (("train", 6), ("test", 4)):
            meta = json.loads((tmp_path / f"data/features/{task}/{split}/meta.json")
                              .read_text())
            assert meta["count"] == n and meta["dims"] == {m: 16 for m in mods}
            assert meta["encoders"] == {m: f"imagebind:{ckpt}" for m in mods}
        assert (tmp_path / f"data/features/{task}/test/classes.safetensors").is_file()
    import pandas as pd

    df = pd.concat(pd.read_parquet(f) for f in (tmp_path / "results/eval").rglob("*.parquet"))
    for method in ("finetune", "dns"):
        sub = df[(df.method == method) & (df.metric == "map")]
        assert set(zip(sub.step, sub.eval_task, strict=True)) == {
            (s, t) for s in (0, 1, 2) for t in ("t1_text_video", "t2_image_audio")}
    metrics = json.loads((tmp_path / "reports/metrics.json").read_text())
    assert set(metrics["pets"]) == {"finetune", "dns"}
    assert "t1_text_video" in (tmp_path / "reports/report.md").read_text()
