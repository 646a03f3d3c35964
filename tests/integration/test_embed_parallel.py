"""Embedding under torchrun: 2 CPU processes (gloo) write byte-identical feature shards to 1
process; embed.dtype runs the model in that dtype while features are stored as float32/16."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.imagebind import require_imagebind, tiny_imagebind

torch = pytest.importorskip("torch")
ib = require_imagebind()

TORCHRUN = Path(sys.executable).parent / "torchrun"
TASK = {"name": "ti", "corpus": "c", "modalities": ["text", "image"]}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, str]:
    from helpers.data import make_corpus

    from cmcl.shards import shard_task

    d = tmp_path_factory.mktemp("embed_mp")
    corpus = make_corpus(d / "corpus", n_per_class=6)
    shard_task(TASK, {"path": str(corpus)}, "train", d / "s", samples_per_shard=5)
    return d, f"imagebind:{tiny_imagebind(d / 'tiny.pth')}"


def embed_cmd(d: Path, spec: str, out: Path, processes: int) -> list[str]:
    cfg = {"embed": {"encoders": {"text": spec, "image": spec}, "batch_size": 3}}
    args = ["-m", "cmcl", "embed", "--cfg", json.dumps(cfg), "--shards", str(d / "s"),
            "--out", str(out)]
    return [str(TORCHRUN), "--standalone", f"--nproc_per_node={processes}", *args] \
        if processes > 1 else [sys.executable, *args]


def files(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*"))
            if f.is_file()}


def test_two_processes_write_the_bytes_of_one(shards):
    d, spec = shards
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for n in (1, 2):
        p = subprocess.run(embed_cmd(d, spec, d / f"f{n}", n), capture_output=True, text=True,
                           env=env, timeout=600)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    one, two = files(d / "f1"), files(d / "f2")
    assert set(one) == set(two) and {"meta.json", "sizes.json", "index.parquet",
                                      "classes.safetensors"} <= set(one)
    assert [k for k in one if one[k] != two[k]] == []
    assert not list(d.glob(".f2.parts*"))  # the part folders are gone
    meta = json.loads(one["meta.json"])
    assert meta["count"] == 16 and meta["dims"] == {"text": 16, "image": 16}


def test_model_dtype_and_storage_dtype(shards, tmp_path, one_thread):
    from cmcl.embed import embed_split
    from cmcl.shards import read_features

    d, spec = shards
    enc = {"text": spec, "image": spec}
    embed_split(d / "s", tmp_path / "f32", enc, batch_size=8)
    ref = read_features(tmp_path / "f32")["image"]
    for dtype, stored in (("bfloat16", "float32"), ("float16", "float16")):
        embed_split(d / "s", tmp_path / dtype, enc, batch_size=8, dtype=dtype)
        meta = json.loads((tmp_path / dtype / "meta.json").read_text())
        assert (meta["dtype"], meta["model_dtype"]) == (stored, dtype)
        got = read_features(tmp_path / dtype)["image"]
        np.testing.assert_allclose(got, ref, atol=0.05)
        model = ib.load(spec, spec.split(":", 1)[1], dtype)
        assert next(model.net.modality_trunks["vision"].parameters()).dtype == \
            getattr(torch, dtype)
    with pytest.raises(ValueError, match="storage_dtype: 'bfloat16'.*no bfloat16"):
        embed_split(d / "s", tmp_path / "bad", enc, dtype="bfloat16", storage_dtype="bfloat16")
    with pytest.raises(ValueError, match="embed.dtype: 'int8'"):
        embed_split(d / "s", tmp_path / "bad", enc, dtype="int8")
