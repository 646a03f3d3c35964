"""Every registered method through the same entry points the pipeline rules call."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from helpers.data import ROOT

from cmcl.cli import main
from cmcl.strategies import discover

TASKS = [{"name": "lo", "corpus": "c", "modalities": ["image", "audio"], "classes": [0, 1],
          "pairing": "class", "relevance": "label"},
         {"name": "hi", "corpus": "c", "modalities": ["image", "audio"], "classes": [2, 3],
          "pairing": "class", "relevance": "label"}]
CFG = {"model": {"embed_dim": 8}, "loss": {}, "methods": {},
       "train": {"epochs": 2, "batch_size": 8, "lr": 0.05, "weight_decay": 0.0,
                 "grad_clip": 1.0},
       "eval": {"n_subsets": 1, "subset_size": 100}}


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    from helpers.data import make_corpus

    from cmcl.embed import embed_split
    from cmcl.shards import shard_task

    d = tmp_path_factory.mktemp("all")
    corpus = make_corpus(d / "corpus", n_per_class=10)
    for t in TASKS:
        for split in ("train", "test"):
            shard_task(t, {"path": str(corpus)}, split, d / f"s/{t['name']}/{split}")
            embed_split(d / f"s/{t['name']}/{split}", d / f"f/{t['name']}/{split}",
                        {"image": "pixels", "audio": "mfcc_stats"})
    return d


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("method", sorted(discover()))
def test_method_runs_the_pipeline_verbs(features, tmp_path, method):
    f, run = features / "f", tmp_path
    cfg = json.dumps(CFG)
    assert main(["init", "--cfg", cfg, "--method", method, "--seed", "1", "--features",
                 str(f / "lo/train"), str(f / "hi/train"), "--out", str(run / "step0")]) == 0
    joint = discover()[method].joint
    steps = [(2, {"name": "joint", "tasks": TASKS})] if joint else [(1, TASKS[0]), (2, TASKS[1])]
    prev = run / "step0"
    for step, task in steps:
        feats = [str(f / t["name"] / "train") for t in task.get("tasks", [task])]
        assert main(["train", "--cfg", json.dumps({**CFG, "task": task}), "--method", method,
                     "--seed", "1", "--step", str(step), "--features", *feats, "--prev",
                     str(prev), "--out", str(run / f"step{step}")]) == 0
        prev = run / f"step{step}"
    ecfg = json.dumps({**CFG, "tasks": TASKS})
    assert main(["evaluate", "--cfg", ecfg, "--model", str(prev), "--features",
                 str(f / "lo/test"), str(f / "hi/test"), "--out", str(run / "e.parquet")]) == 0
    df = pd.read_parquet(run / "e.parquet")
    assert set(df.eval_task) == {"lo", "hi"} and df.value.notna().all()
    meta = json.loads((prev / "meta.json").read_text())
    assert all(v == v and abs(v) < 1e6 for v in meta["log"]["epoch_loss"])  # finite


def test_readme_lists_every_registered_method():
    readme = (ROOT / "README.md").read_text()
    readme = readme[readme.index("## Methods"): readme.index("### Adding a method")]
    listed = set(re.findall(r"^\| `([a-z0-9_]+)`(?:, `([a-z0-9_]+)`)?", readme, re.M))
    names = {n for pair in listed for n in pair if n}
    assert names == set(discover()), f"README vs registry: {names ^ set(discover())}"
