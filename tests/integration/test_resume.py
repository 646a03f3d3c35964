"""Preemption: a training step killed after a checkpoint resumes to the uninterrupted weights.

In-process for every registered method (a crash is an exception raised mid-batch, so the
strategy's in-task state is exercised on the second step, with a past); as real `kill -9` of a
`python -m cmcl train` subprocess for finetune, dns and derpp.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cmcl.strategies import discover

TASKS = [{"name": "lo", "corpus": "c", "modalities": ["image", "audio"], "classes": [0, 1],
          "pairing": "class", "relevance": "label"},
         {"name": "hi", "corpus": "c", "modalities": ["image", "audio"], "classes": [2, 3],
          "pairing": "class", "relevance": "label"}]
CFG = {"model": {"embed_dim": 8}, "loss": {}, "methods": {},
       "train": {"epochs": 3, "batch_size": 4, "lr": 0.05, "weight_decay": 0.01,
                 "grad_clip": 1.0}}
pytestmark = pytest.mark.usefixtures("one_thread")


class Preempted(Exception):
    """Stands for the kill: raised from inside a training batch."""


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    from helpers.data import make_corpus

    from cmcl.embed import embed_split
    from cmcl.shards import shard_task

    d = tmp_path_factory.mktemp("resume")
    corpus = make_corpus(d / "corpus", n_per_class=8)
    for t in TASKS:
        shard_task(t, {"path": str(corpus)}, "train", d / f"s_{t['name']}")
        embed_split(d / f"s_{t['name']}", d / f"f_{t['name']}",
                    {"image": "pixels", "audio": "mfcc_stats"})
    return d


def cfg_with(every: int, **train) -> dict:
    return {**CFG, "train": {**CFG["train"], "checkpoint_every": every, **train}}


def run_step(d: Path, method: str, cfg: dict, step: int, prev: Path, out: Path) -> dict:
    from cmcl.train import train_step

    task = TASKS[step - 1]
    return train_step(cfg, method, 1, step, task, d / f"f_{task['name']}", prev, out)


def chain_to_step1(d: Path, method: str, run: Path) -> Path:
    from cmcl.train import init_step

    init_step(CFG, method, 1, [d / "f_lo"], run / "step0")
    run_step(d, method, cfg_with(0), 1, run / "step0", run / "step1")
    return run / "step1"


def crash_at(monkeypatch, batch: int) -> None:
    """Raise inside optimizer step number `batch` (1-based): a kill in the middle of a batch."""
    calls, real = [0], torch.optim.AdamW.step

    def step(self, *a, **k):
        calls[0] += 1
        if calls[0] == batch:
            raise Preempted
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)


@pytest.mark.parametrize("method", sorted(m for m, c in discover().items() if not c.joint))
def test_resumed_step_equals_uninterrupted(features, tmp_path, monkeypatch, method):
    from cmcl.io import load_tensors

    step1 = chain_to_step1(features, method, tmp_path)
    plain = run_step(features, method, cfg_with(0), 2, step1, tmp_path / "plain")
    out = tmp_path / "step2"
    with monkeypatch.context() as m:
        crash_at(m, 9)  # 3 batches an epoch: after the checkpoint at step 5, mid epoch 2
        with pytest.raises(Preempted):
            run_step(features, method, cfg_with(5), 2, step1, out)
    assert not out.exists()
    assert [p.name for p in Path(f"{out}.resume").iterdir()] == ["ckpt-000000005"]
    resumed = run_step(features, method, cfg_with(5), 2, step1, out)
    assert resumed["final_digest"] == plain["final_digest"]
    assert resumed["epoch_loss"] == plain["epoch_loss"]
    assert not Path(f"{out}.resume").exists(), "the checkpoint is removed once the step is done"
    for f in sorted((tmp_path / "plain/state").iterdir()):  # the method's state too
        g = out / "state" / f.name
        if f.suffix == ".safetensors":
            a, b = load_tensors(f), load_tensors(g)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f.name
        else:
            assert f.read_text() == g.read_text(), f.name

@pytest.mark.parametrize("method", ["dns", "gpm", "adam_nscl"])
def test_rotated_placement_resumes(features, tmp_path, monkeypatch, method):
    """Rotated placements feed inputs rotated once per task (train_inputs) to weights kept in
    rotated coordinates: a resumed step redoes the rotation and ends bit-identical."""
    step1 = chain_to_step1(features, method, tmp_path)

    def cfg(every: int) -> dict:
        return {**cfg_with(every), "methods": {method: {"placement": "rotated"}}}

    plain = run_step(features, method, cfg(0), 2, step1, tmp_path / "plain")
    assert plain["start_digest"] != plain["final_digest"]
    out = tmp_path / "step2"
    with monkeypatch.context() as m:
        crash_at(m, 9)
        with pytest.raises(Preempted):
            run_step(features, method, cfg(5), 2, step1, out)
    resumed = run_step(features, method, cfg(5), 2, step1, out)
    assert resumed["final_digest"] == plain["final_digest"]
    assert resumed["epoch_loss"] == plain["epoch_loss"]


def test_checkpoint_of_other_params_is_ignored(features, tmp_path, monkeypatch, capfd):
    step1 = chain_to_step1(features, "finetune", tmp_path)
    out = tmp_path / "step2"
    with monkeypatch.context() as m:
        crash_at(m, 8)
        with pytest.raises(Preempted):
            run_step(features, "finetune", cfg_with(2, lr=0.05), 2, step1, out)
    capfd.readouterr()
    other = run_step(features, "finetune", cfg_with(2, lr=0.02), 2, step1, out)
    err = capfd.readouterr().err
    assert "ignoring checkpoint" in err and "other inputs or parameters" in err
    assert "resuming" not in err
    fresh = run_step(features, "finetune", cfg_with(0, lr=0.02), 2, step1, tmp_path / "fresh")
    assert other["final_digest"] == fresh["final_digest"]


def test_joint_step_resumes(features, tmp_path, monkeypatch):
    """Joint training interleaves the tasks' batches in a seeded order: replayed on resume."""
    from cmcl.train import init_step, train_step

    init_step(CFG, "joint", 1, [features / "f_lo", features / "f_hi"], tmp_path / "step0")
    task = {"name": "joint", "tasks": TASKS}
    dirs = [features / "f_lo", features / "f_hi"]
    plain = train_step(cfg_with(0), "joint", 1, 2, task, dirs, tmp_path / "step0",
                       tmp_path / "plain")
    with monkeypatch.context() as m:
        crash_at(m, 13)  # 6 batches an epoch: mid epoch 3, after the checkpoint at step 10
        with pytest.raises(Preempted):
            train_step(cfg_with(5), "joint", 1, 2, task, dirs, tmp_path / "step0",
                       tmp_path / "out")
    resumed = train_step(cfg_with(5), "joint", 1, 2, task, dirs, tmp_path / "step0",
                         tmp_path / "out")
    assert resumed["final_digest"] == plain["final_digest"]
    assert resumed["epoch_loss"] == plain["epoch_loss"]


def train_cmd(d: Path, method: str, prev: Path, out: Path, epochs: int, every: int) -> list:
    cfg = {**cfg_with(every, epochs=epochs), "task": TASKS[1]}
    return [sys.executable, "-m", "cmcl", "train", "--cfg", json.dumps(cfg), "--method", method,
            "--seed", "1", "--step", "2", "--features", str(d / "f_hi"), "--prev", str(prev),
            "--out", str(out)]


@pytest.mark.parametrize("method", ["finetune", "dns", "derpp"])
def test_kill_9_after_a_checkpoint_resumes_to_the_uninterrupted_weights(features, tmp_path,
                                                                        capfd, method):
    """SIGKILL at a random moment after one of the first checkpoints (possibly while the next
    is being written): the rerun resumes from the newest complete one and ends bit-identical.
    The rerun is the same CLI verb in this process (one interpreter start less)."""
    from cmcl.cli import main
    from cmcl.train import train_step

    step1 = chain_to_step1(features, method, tmp_path)
    epochs, every = 200, 50  # 3 batches an epoch: 600 optimizer steps, 11 checkpoints
    out = tmp_path / "step2"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the in-process reference runs on 1 thread
    log_file = (tmp_path / "killed.log").open("w")
    p = subprocess.Popen(train_cmd(features, method, step1, out, epochs, every), env=env,
                         stdout=subprocess.DEVNULL, stderr=log_file)
    resume, after = Path(f"{out}.resume"), random.randint(1, 3) * every
    deadline = time.time() + 120
    while not any(int(c.name[5:]) >= after for c in resume.glob("ckpt-*")):
        assert p.poll() is None, "training ended before a checkpoint: " + \
            (tmp_path / "killed.log").read_text()[-2000:]
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.002)
    time.sleep(random.uniform(0.0, 0.05))
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    log_file.close()
    assert p.returncode == -signal.SIGKILL, "the job finished before the kill: lengthen it"
    assert not out.exists(), "a killed job must not leave a complete-looking step folder"

    capfd.readouterr()
    assert main(train_cmd(features, method, step1, out, epochs, every)[3:]) == 0  # the rerun
    assert "resuming from" in capfd.readouterr().err
    ref = train_step({**cfg_with(0, epochs=epochs), "task": TASKS[1]}, method, 1, 2, TASKS[1],
                     features / "f_hi", step1, tmp_path / "ref")
    log = json.loads((out / "meta.json").read_text())["log"]
    assert log["final_digest"] == ref["final_digest"]
    assert log["epoch_loss"] == ref["epoch_loss"]
    assert not resume.exists()
