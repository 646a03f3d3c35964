"""The paper's params files run as written: the 11-step sequence, the authors' settings, never
the digits benchmark, and every file needed is in the repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.data import ROOT

from cmcl.config import compose, load

BIN = Path(sys.executable).parent
ENCODERS = {"imagebind": (1024, 1e-4), "languagebind": (768, 1e-3), "unibind": (1024, 1e-4)}
SEQUENCE = [("ucf101", ["text", "video"]), ("esc50", ["text", "audio"]),
            ("nyudv2", ["image", "depth"]), ("clotho", ["text", "audio"]),
            ("vggsound_s", ["text", "audio"]), ("vggsound_s", ["text", "video"]),
            ("vggsound_s", ["audio", "video"]), ("tvl", ["image", "tactile"]),
            ("tvl", ["text", "tactile"]), ("tvl", ["image", "text"]),
            ("llvip", ["image", "thermal"])]
VARIANTS = ["dns_faithful", "dns_input_only", "dns_output_only", "dns_paper_text"]


@pytest.fixture
def data_root(tmp_path) -> Path:
    """A project folder with the expected data layout (empty files stand in for the HDF5s)."""
    shutil.copy(ROOT / "Snakefile", tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path)
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline")
    for name, (dataset, _) in {"ucf101": ("ucf101", 0), "esc50": ("esc50", 0),
                               "nyudv2": ("nyudv2", 0), "clotho": ("clotho", 0),
                               "vggsound": ("vggsound_s", 0), "tvl": ("tvl", 0),
                               "llvip": ("llvip", 0)}.items():
        folder = tmp_path / "data/raw" / name
        folder.mkdir(parents=True)
        for enc in ENCODERS:
            for split in ("train", "test"):
                (folder / f"{dataset}_{split}_{enc}.h5").touch()
    return tmp_path


@pytest.mark.parametrize("enc", list(ENCODERS))
def test_paper_params_are_the_authors_settings(enc, data_root, monkeypatch):
    monkeypatch.chdir(data_root)
    p = load(f"pipeline/params/{enc}.yaml", as_configfile=True)
    dim, lr = ENCODERS[enc]
    assert list(p["sequences"]) == ["paper11"]  # nothing of params.yaml merged in
    assert "digits" not in p["corpora"] and not any(t.startswith("t1_") for t in p["tasks"])
    seq = p["sequences"]["paper11"]
    assert [(p["tasks"][t]["corpus"], p["tasks"][t]["modalities"]) for t in seq] == SEQUENCE
    assert all(c["options"]["encoder"] == enc for c in p["corpora"].values())
    assert p["model"] == {"embed_dim": dim, "bias": True, "init": "identity"}
    t = p["train"]
    assert (t["lr"], t["weight_decay"], t["batch_size"], t["epochs"], t["grad_clip"]) == \
        (lr, 1e-3, 64, 5, 1.0)
    assert (t["preset"], t["lr_schedule"], t["warmup_steps"], t["decay_biases"],
            t["drop_last"]) == ("paper", "linear", 0, False, False)
    assert p["loss"]["preset"] == "paper"
    dns = p["methods"]["dns"]
    assert (dns["threshold_mode"], dns["threshold_in"], dns["threshold_out"]) == \
        ("absolute", 0.1, 0.0)
    assert set(VARIANTS) <= set(t["methods"])
    faithful = p["variants"]["dns_faithful"]["options"]
    assert faithful["placement"] == "faithful" and faithful["threshold_in"] == 0.1
    assert p["variants"]["dns_input_only"]["options"]["sides"] == "input"
    assert p["variants"]["dns_paper_text"]["options"]["threshold_in"] == 0.01


def test_paper_params_cite_only_what_the_repository_has():
    for f in (ROOT / "pipeline/params").glob("*.yaml"):
        text = f.read_text()
        assert "METHODS.md" not in text, f
        for ref in re.findall(r"pipeline/params/[a-z_]+\.yaml", text):
            assert (ROOT / ref).exists(), (f, ref)


def snakemake_n(cwd: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    p = subprocess.run([str(BIN / "snakemake"), "-n", *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


def job_counts(out: str) -> dict[str, int]:
    table = out[out.index("Job stats:"):].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_snakemake_runs_the_paper_file_as_written(data_root):
    """The whole 11-step DAG of the paper's matrix, variants included; no digits job."""
    counts = job_counts(snakemake_n(data_root, "--configfile", "pipeline/params/imagebind.yaml"))
    p = compose([data_root / "pipeline/params/imagebind.yaml"])
    runs = len(p["train"]["methods"]) * len(p["train"]["seeds"])
    continual = runs - len(p["train"]["seeds"])  # joint trains one step
    assert counts["import_features"] == 22  # 11 tasks x 2 splits
    assert counts["init"] == runs
    assert counts["train"] == continual * 11 + len(p["train"]["seeds"])
    assert counts["evaluate"] == runs  # one job evaluates every step of a run
    assert not {"corpus", "shard", "embed"} & set(counts)


@pytest.mark.parametrize("enc", ["languagebind", "unibind"])
def test_snakemake_composes_the_extending_files(enc, data_root):
    out = snakemake_n(data_root, "--configfile", f"pipeline/params/{enc}.yaml", "--",
                      "results/runs/paper11/dns_faithful/seed1/step2")
    assert job_counts(out) == {"import_features": 11, "init": 1, "train": 2, "total": 14}
    assert "digits" not in out
