"""Faults that must never lose or corrupt results: kill -9 mid-training, crafted tars."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cmcl.io import write_json
from cmcl.shards import npy_bytes

CFG = {"model": {"embed_dim": 8}, "loss": {}, "methods": {},
       "train": {"epochs": 400, "batch_size": 4, "lr": 0.01, "weight_decay": 0.0,
                 "grad_clip": 1.0}}
TASK = {"name": "ia", "corpus": "c", "modalities": ["image", "audio"], "pairing": "class",
        "relevance": "label"}


@pytest.fixture
def step0(corpus, tmp_path):
    from cmcl.embed import embed_split
    from cmcl.shards import shard_task
    from cmcl.train import init_step

    shard_task(TASK, {"path": str(corpus)}, "train", tmp_path / "s")
    embed_split(tmp_path / "s", tmp_path / "f", {"image": "pixels", "audio": "mfcc_stats"})
    init_step(CFG, "dns", 1, [tmp_path / "f"], tmp_path / "step0")
    return tmp_path


def train_cmd(d, out, epochs):
    cfg = {**CFG, "train": {**CFG["train"], "epochs": epochs}, "task": TASK}
    return [sys.executable, "-m", "cmcl", "train", "--cfg", json.dumps(cfg), "--method", "dns",
            "--seed", "1", "--step", "1", "--features", str(d / "f"), "--prev",
            str(d / "step0"), "--out", str(out)]


def test_kill_9_mid_training_leaves_nothing_and_rerun_matches(step0):
    d = step0
    out = d / "step1"
    p = subprocess.Popen(train_cmd(d, out, 400), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    seen = ""
    while "step 1 ia [dns]:" not in seen:  # tqdm's bar: the epoch loop is running
        ch = p.stderr.read(1)
        assert ch, f"training exited before its first epoch: {seen[-2000:]}"
        seen += ch
    time.sleep(random.uniform(0.2, 1.0))
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    assert not out.exists(), "a killed job must not leave a complete-looking step folder"

    from cmcl.cli import main

    for target in (out, d / "again"):  # the same CLI verb, in this process
        assert main(train_cmd(d, target, 20)[3:]) == 0
    a = json.loads((out / "meta.json").read_text())["log"]
    b = json.loads((d / "again/meta.json").read_text())["log"]
    assert a["final_digest"] == b["final_digest"]  # the rerun equals an uninterrupted run
    assert a["epoch_loss"] == b["epoch_loss"]


def test_pickle_bearing_checkpoint_is_refused(step0):
    import torch

    from cmcl.train import load_model

    bad = step0 / "step0"
    torch.save({"heads.image.weight": torch.zeros(8, 64)}, bad / "model.safetensors")
    with pytest.raises(ValueError, match="model.safetensors: not a valid safetensors file"):
        load_model(bad)


def test_non_finite_features_are_named_before_training(step0):
    """A NaN in the features would surface as a NaN loss blamed on the learning rate."""
    from cmcl.shards import read_features, write_shards
    from cmcl.train import train_step

    d = step0
    data = read_features(d / "f")
    recs = []
    for i, key in enumerate(data["keys"]):
        image = data["image"][i].copy()
        if i == 3:
            image[5] = np.nan
        recs.append({"__key__": key, "cls": int(data["labels"][i]),
                     "image.npy": npy_bytes(image), "audio.npy": npy_bytes(data["audio"][i])})
    (d / "nan").mkdir()
    write_shards(d / "nan", recs, 100)
    from cmcl.io import record_digests

    meta = json.loads((d / "f/meta.json").read_text())  # with this folder's own file digests
    write_json(d / "nan/meta.json", {**meta, "sha256": record_digests(d / "nan")})
    cfg = {**CFG, "train": {**CFG["train"], "epochs": 1}}
    key = re.escape(data["keys"][3])
    with pytest.raises(ValueError, match=rf"nan: 'image' features of sample '{key}' are NaN or "
                                         r"infinite \(1 sample"):
        train_step(cfg, "dns", 1, 1, TASK, d / "nan", d / "step0", d / "step1")
    assert not (d / "step1").exists()


def test_diverging_loss_stops_the_step_and_names_it(step0, monkeypatch):
    """A loss that turns NaN mid-training stops the job; no step folder is written."""
    import cmcl.train as tr

    calls, real = [0], tr.info_nce

    def exploding(*a, **k):
        calls[0] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls[0] == 5 else loss

    monkeypatch.setattr(tr, "info_nce", exploding)
    cfg = {**CFG, "train": {**CFG["train"], "epochs": 3}}
    with pytest.raises(FloatingPointError, match=r"step 1 \(ia, dns\): loss is nan at epoch \d+;"
                                                 r" lower train.lr"):
        tr.train_step(cfg, "dns", 1, 1, TASK, step0 / "f", step0 / "step0", step0 / "step1")
    assert not (step0 / "step1").exists()
