"""The stage-config layer: one definition of what each job reads and what changes a result."""

from __future__ import annotations

import copy
import json

import pytest
from helpers.data import ROOT

from cmcl import stages
from cmcl.config import ParamsError, check, load
from cmcl.schema import complete, defaults


@pytest.fixture(scope="module")
def params() -> dict:
    return load(ROOT / "params.yaml")


def changed(params: dict, path: str, value) -> dict:
    out = copy.deepcopy(params)
    *parents, leaf = path.split(".")
    node = out
    for p in parents:
        node = node[p]
    node[leaf] = value
    return out


def test_neutral_values_are_the_schema_defaults():
    """A job gets a left-out neutral key back from the schema: it must be the same value."""
    for ignores in (stages.TRAIN_IGNORES, stages.EMBED_IGNORES):
        for key, value in ignores.get("neutral", {}).items():
            section, leaf = key.split(".")
            assert defaults(section)[leaf] == value, key


def test_rule_params_leave_out_only_what_cannot_change_the_output(params):
    seq, names = next(iter(params["sequences"].items()))
    task = names[0]
    assert stages.shard(changed(params, "shard.workers", 7), task).params() \
        == stages.shard(params, task).params()
    assert stages.shard(changed(params, "shard.samples_per_shard", 3), task).params() \
        != stages.shard(params, task).params()  # other tars: the job reruns
    assert stages.embed(changed(params, "embed.processes", 4), task).params() \
        == stages.embed(params, task).params()
    for key, value in (("train.checkpoint_every", 50), ("train.seeds", [0, 1, 2, 3]),
                       ("train.methods", ["dns"])):
        assert stages.train(changed(params, key, value), seq, "finetune", 1).params() \
            == stages.train(params, seq, "finetune", 1).params(), key
    other = changed(params, "methods.dns.threshold_in", 0.5)
    assert stages.train(other, seq, "dns", 1).params() \
        != stages.train(params, seq, "dns", 1).params()
    assert stages.train(other, seq, "finetune", 1).params() \
        == stages.train(params, seq, "finetune", 1).params()  # tuning one method, not another


def test_run_key_follows_results_not_bytes(params):
    seq = next(iter(params["sequences"]))
    key = stages.run_key(params, seq, "dns")
    assert stages.run_key(changed(params, "shard.samples_per_shard", 3), seq, "dns") == key
    assert stages.run_key(changed(params, "embed.processes", 2), seq, "dns") == key
    assert stages.run_key(changed(params, "train.checkpoint_every", 9), seq, "dns") == key
    assert stages.run_key(changed(params, "train.seeds", [5]), seq, "dns") != key  # averaged
    assert stages.run_key(changed(params, "eval.subset_size", 50), seq, "dns") != key
    assert stages.run_key(changed(params, "model.embed_dim", 32), seq, "dns") != key
    assert stages.run_key(changed(params, "methods.gpm.threshold", 0.5), seq, "dns") == key


def test_a_job_completes_its_config_from_the_schema(params):
    seq = next(iter(params["sequences"]))
    st = stages.train(params, seq, "dns", 2)
    got = complete(json.loads(st.params()))
    for key in ("lr_schedule", "drop_last", "decay_biases", "preset"):  # left out: neutral
        assert key not in json.loads(st.params())["train"]
        assert got["train"][key] == st.values["train"][key]
    assert got["methods"] == st.values["methods"] and got["task"] == st.values["task"]


def test_metric_names_follow_eval_ks(params):
    p = changed(params, "eval.ks", [1, 5, 20])
    assert stages.metric_names(p) == ["map", "r1", "r5", "r20", "zs_acc"]
    assert "r20_final_avg" in stages.check(p).values["metrics"]
    check(changed(p, "report.main_metric", "r20"))
    with pytest.raises(ParamsError, match=r"report.main_metric: 'r10' is not a score"):
        check(changed(p, "report.main_metric", "r10"))


def test_eval_ks_with_20_reaches_metrics_json_and_report(corpus, tmp_path):
    """eval.ks [1, 5, 20]: evaluate writes R@20, the report summarises and prints it."""
    from cmcl.embed import embed_split
    from cmcl.evaluate import evaluate_step
    from cmcl.report import build_report
    from cmcl.shards import shard_task
    from cmcl.train import init_step, train_step

    task = {"name": "ia", "corpus": "c", "modalities": ["image", "audio"], "pairing": "class",
            "relevance": "label"}
    for split in ("train", "test"):
        shard_task(task, {"path": str(corpus)}, split, tmp_path / f"s_{split}")
        embed_split(tmp_path / f"s_{split}", tmp_path / f"f_{split}",
                    {"image": "pixels", "audio": "mfcc_stats"})
    cfg = {"model": {"embed_dim": 8}, "loss": {}, "methods": {},
           "train": {"epochs": 1, "batch_size": 8, "lr": 0.05, "weight_decay": 0.0,
                     "grad_clip": 1.0},
           "eval": {"ks": [1, 5, 20], "n_subsets": 1, "subset_size": 100}}
    init_step(cfg, "finetune", 0, [tmp_path / "f_train"], tmp_path / "step0")
    train_step(cfg, "finetune", 0, 1, task, tmp_path / "f_train", tmp_path / "step0",
               tmp_path / "step1")
    import pandas as pd

    df = pd.concat([evaluate_step(cfg, tmp_path / f"step{s}", [task], [tmp_path / "f_test"],
                                  tmp_path / f"e{s}.parquet", "q") for s in (0, 1)])
    assert {"r1", "r5", "r20"} <= set(df["metric"]) and "r10" not in set(df["metric"])
    names = stages.metric_names(cfg)
    metrics = build_report(df, {"q": [task]}, tmp_path / "rep", "map", metric_names=names)
    assert "r20_final_avg" in metrics["q"]["finetune"]
    assert "r20_bwt" in json.loads((tmp_path / "rep/metrics.json").read_text())["q"]["finetune"]
    md = (tmp_path / "rep/report.md").read_text()
    assert "R@20" in md and "R@10" not in md
    with pytest.raises(ValueError, match=r"no evaluation rows of metric\(s\) \['r10'\]"):
        build_report(df, {"q": [task]}, tmp_path / "rep2", "map",
                     metric_names=["map", "r1", "r10"])


def test_the_stage_layer_loads_without_torch():
    """The Snakefile builds every rule's params from it at each parse: no torch (~2 s) there."""
    import subprocess
    import sys

    code = "import sys, cmcl.stages, cmcl.config\nassert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
