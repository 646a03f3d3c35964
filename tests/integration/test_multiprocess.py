"""Data-parallel training (2 CPU processes, gloo) trains exactly like one process."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.numerics import covariance_rtol, weight_atol

from cmcl.io import load_tensors

TASK = {"name": "ia", "corpus": "c", "modalities": ["image", "audio"], "pairing": "class",
        "relevance": "label"}
CFG = {"model": {"embed_dim": 8}, "loss": {},
       "methods": {"dns": {"threshold_mode": "relative", "threshold_in": 1e-3,
                           "threshold_out": 1e-3}},
       "train": {"epochs": 3, "batch_size": 8, "lr": 0.05, "weight_decay": 0.01,
                 "grad_clip": 1.0}}
TORCHRUN = Path(sys.executable).parent / "torchrun"


def optimizer_steps(features: Path, epochs: int, batch: int) -> int:
    """Upper bound on the optimizer steps of a task: epochs x batches (a partial one counted)."""
    n = sum(json.loads((features / "sizes.json").read_text()).values())
    return epochs * -(-n // batch)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Features of two tasks and a finished step 1 per method (single process)."""
    from helpers.data import make_corpus

    from cmcl.embed import embed_split
    from cmcl.shards import shard_task
    from cmcl.train import init_step, train_step

    d = tmp_path_factory.mktemp("mp")
    corpus = make_corpus(d / "corpus", n_per_class=18)
    for name, classes in (("lo", [0, 1]), ("hi", [2, 3])):
        task = {**TASK, "name": name, "classes": classes}
        shard_task(task, {"path": str(corpus)}, "train", d / f"s_{name}")
        embed_split(d / f"s_{name}", d / f"f_{name}", {"image": "pixels", "audio": "mfcc_stats"})
    # a text head no task here trains, as in any sequence of more than two modalities
    text = {"name": "ti", "corpus": "c", "modalities": ["text", "image"], "classes": [0]}
    shard_task(text, {"path": str(corpus)}, "train", d / "s_ti")
    embed_split(d / "s_ti", d / "f_ti", {"text": "minilm", "image": "pixels"})
    for method in ("finetune", "dns", "derpp"):
        init_step(CFG, method, 1, [d / "f_lo", d / "f_ti"], d / f"{method}0")
        train_step(CFG, method, 1, 1, {**TASK, "name": "lo"}, d / "f_lo", d / f"{method}0",
                   d / f"{method}1")
    return d


def step2_cmd(d: Path, method: str, out: Path, processes: int, **train) -> list[str]:
    cfg = {**CFG, "train": {**CFG["train"], **train},
           "task": {**TASK, "name": "hi", "classes": [2, 3]}}
    args = ["-m", "cmcl", "train", "--cfg", json.dumps(cfg), "--method", method, "--seed", "1",
            "--step", "2", "--features", str(d / "f_hi"), "--prev", str(d / f"{method}1"),
            "--out", str(out)]
    return [str(TORCHRUN), "--standalone", f"--nproc_per_node={processes}", *args] \
        if processes > 1 else [sys.executable, *args]


def step2(d: Path, method: str, out: Path, processes: int, **train) -> str:
    p = subprocess.run(step2_cmd(d, method, out, processes, **train), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    return p.stderr


def test_weight_tolerance_is_derived_not_fitted_to_one_machine(chain):
    """The fixed atol=1e-5 failed on Intel Xeon (AVX-512, MKL): heads.image.weight differed by
    1.54e-5 (dns). The derived bound covers that with room, and stays far below the weights'
    scale, so a real data-parallel bug (e.g. negatives not gathered) still fails."""
    tr = CFG["train"]
    steps = optimizer_steps(chain / "f_hi", tr["epochs"], tr["batch_size"])
    w = load_tensors(chain / "dns1/model.safetensors")
    tol = {k: weight_atol(x, steps, tr["lr"], tr["batch_size"]) for k, x in w.items()}
    assert steps == 12 and tol["heads.image.weight"] > 3 * 1.54e-5
    assert all(t < 1e-2 * w[k].abs().max().item() for k, t in tol.items())


@pytest.mark.skipif(shutil.which(str(TORCHRUN)) is None, reason="torchrun not installed")
@pytest.mark.parametrize("method", ["finetune", "dns", "derpp"])
def test_two_processes_match_one(chain, method):
    d = chain
    step2(d, method, d / f"{method}_p1", 1)
    step2(d, method, d / f"{method}_p2", 2)
    one = load_tensors(d / f"{method}_p1/model.safetensors")
    two = load_tensors(d / f"{method}_p2/model.safetensors")
    tr = CFG["train"]
    steps = optimizer_steps(d / "f_hi", tr["epochs"], tr["batch_size"])
    atol = {k: weight_atol(w, steps, tr["lr"], tr["batch_size"]) for k, w in one.items()}
    for k in one:
        diff = (one[k] - two[k]).abs().max().item()
        assert diff <= atol[k], f"{k}: max diff {diff:.2e} > {atol[k]:.2e}"
    log = json.loads((d / f"{method}_p2/meta.json").read_text())["log"]
    assert log["num_processes"] == 2
    if method == "dns":  # the subspace state is the single-process one
        a = load_tensors(d / "dns_p1/state/subspace.safetensors")
        b = load_tensors(d / "dns_p2/state/subspace.safetensors")
        n = sum(json.loads((d / "f_hi/sizes.json").read_text()).values())
        rel_tol = covariance_rtol(one, atol, n)
        for k in a:
            x, y = a[k].double(), b[k].double()
            rel = ((x - y).norm() / x.norm().clamp_min(1e-12)).item()
            assert rel <= rel_tol, f"{k}: relative difference {rel:.1e} > {rel_tol:.1e}"
    if method == "derpp":  # every process buffers the global batch: the 1-process buffer
        a = load_tensors(d / "derpp_p1/state/buffer.safetensors")
        b = load_tensors(d / "derpp_p2/state/buffer.safetensors")
        assert a.keys() == b.keys()
        for k in a:  # inputs and labels exactly; stored embeddings z = W x of the weights
            # then: |dz| <= max|dW| |x|_1 (bounded by the final weight_atol, as errors grow)
            if not k.startswith("emb/"):
                assert torch.equal(a[k], b[k]), k
                continue
            m = k[4:]
            tol = atol[f"heads.{m}.weight"] * a[f"feat/{m}"].abs().sum(1).max().item()
            diff = (a[k].double() - b[k].double()).abs().max().item()
            assert diff <= tol, f"{k}: max diff {diff:.2e} > {tol:.2e}"


@pytest.mark.skipif(shutil.which(str(TORCHRUN)) is None, reason="torchrun not installed")
def test_two_process_job_killed_after_a_checkpoint_resumes_exactly(chain):
    """Each process checkpoints its own method state (replay buffer, generators); launcher and
    workers killed with SIGKILL, as a scheduler does, and relaunched: the weights equal an
    uninterrupted 2-process run's."""
    d, train = chain, {"epochs": 60, "checkpoint_every": 20}  # 4 batches an epoch, 240 steps
    step2(d, "derpp", d / "derpp_plain", 2, epochs=60)
    out = d / "derpp_killed"
    p = subprocess.Popen(step2_cmd(d, "derpp", out, 2, **train), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    resume, after = Path(f"{out}.resume"), random.randint(1, 3) * 20
    deadline = time.time() + 120
    while not any(int(c.name[5:]) >= after for c in resume.glob("ckpt-*")):
        assert p.poll() is None and time.time() < deadline, "no checkpoint before the end"
        time.sleep(0.002)
    workers = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
    for pid in [p.pid, *map(int, workers)]:  # torchrun starts workers in their own sessions
        os.kill(pid, signal.SIGKILL)
    p.wait()
    assert not out.exists()
    assert "resuming from" in step2(d, "derpp", out, 2, **train)
    one = load_tensors(d / "derpp_plain/model.safetensors")
    two = load_tensors(out / "model.safetensors")
    assert all(torch.equal(one[k], two[k]) for k in one)
