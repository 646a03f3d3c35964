"""The paper's params from raw data (pipeline/params/imagebind_raw.yaml): the seven raw
adapters, ImageBind named for every modality, and the whole 11-step DAG with its shard and
embed jobs on a data root laid out as the file's header says."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.data import ROOT

from cmcl.config import load

BIN = Path(sys.executable).parent
RAW = "pipeline/params/imagebind_raw.yaml"
CKPT = "data/models/imagebind_huge.pth"
# the layout each raw adapter reads (empty files and folders stand in for the data)
LAYOUT = {
    "ucf101": ["UCF-101/ApplyEyeMakeup/", "ucfTrainTestlist/classInd.txt",
               "ucfTrainTestlist/trainlist01.txt", "ucfTrainTestlist/testlist01.txt"],
    "esc50": ["audio/", "meta/esc50.csv"],
    "nyudv2": ["train/rgb/", "train/depth/", "test/rgb/", "test/depth/"],
    "clotho": ["clotho_audio_development/", "clotho_audio_evaluation/",
               "clotho_captions_development.csv", "clotho_captions_evaluation.csv"],
    "vggsound": ["vggsound.csv", "video/"],
    "tvl": ["ssvtp/train.csv", "ssvtp/test.csv", "hct/data1/train.csv", "hct/data1/test.csv"],
    "llvip": ["visible/train/", "visible/test/", "infrared/train/", "infrared/test/"],
}


@pytest.fixture
def raw_root(tmp_path) -> Path:
    shutil.copy(ROOT / "Snakefile", tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path)
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline")
    for corpus, entries in LAYOUT.items():
        for e in entries:
            f = tmp_path / "data/raw" / corpus / e
            if e.endswith("/"):
                f.mkdir(parents=True, exist_ok=True)
            else:
                f.parent.mkdir(parents=True, exist_ok=True)
                f.touch()
    for split in ("train", "test"):  # the HDF5 route's files, for the comparison DAG
        for name, dataset in (("ucf101", "ucf101"), ("esc50", "esc50"), ("nyudv2", "nyudv2"),
                              ("clotho", "clotho"), ("vggsound", "vggsound_s"),
                              ("tvl", "tvl"), ("llvip", "llvip")):
            (tmp_path / "data/raw" / name / f"{dataset}_{split}_imagebind.h5").touch()
    (tmp_path / CKPT).parent.mkdir(parents=True)
    (tmp_path / CKPT).touch()
    return tmp_path


def test_raw_file_swaps_the_corpora_and_names_imagebind(raw_root, monkeypatch):
    monkeypatch.chdir(raw_root)
    p = load(RAW, as_configfile=True)
    base = load("pipeline/params/imagebind.yaml", as_configfile=True)
    used = {p["tasks"][t]["corpus"] for t in p["sequences"]["paper11"]}
    assert {p["corpora"][c]["adapter"] for c in used} == {
        "ucf101", "esc50", "nyudv2", "clotho", "vggsound", "tvl", "llvip"}
    assert p["corpora"]["vggsound_s_raw"]["options"]["max_train"] == 10000
    enc = p["embed"]["encoders"]
    assert {m: e for m, e in enc.items() if m != "tactile"} == {
        m: f"imagebind:{CKPT}" for m in ("text", "image", "video", "audio", "depth", "thermal")}
    assert enc["tactile"] == f"imagebind-vision:{CKPT}"  # the authors: tactile -> vision tower
    for key in ("train", "methods", "variants", "model", "loss", "eval", "sequences"):
        assert p[key] == base[key], key  # only the data route differs


def dag(cwd: Path, configfile: str) -> dict[str, int]:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    p = subprocess.run([str(BIN / "snakemake"), "-n", "--configfile", configfile], cwd=cwd,
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    table = p.stdout[p.stdout.index("Job stats:"):].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_snakemake_plans_the_whole_raw_dag(raw_root):
    """Every shard and embed job (11 tasks x 2 splits), and the same training and evaluation
    jobs as the HDF5 route, which has import_features jobs in their place."""
    raw = dag(raw_root, RAW)
    imported = dag(raw_root, "pipeline/params/imagebind.yaml")
    assert raw.pop("shard") == 22 and raw.pop("embed") == 22
    assert imported.pop("import_features") == 22
    raw.pop("total"), imported.pop("total")
    assert raw == imported and {"init", "train", "evaluate", "report"} <= set(raw)
    assert "corpus" not in raw
