"""init -> train -> evaluate (-> report) on feature shards of the synthetic corpus."""

from __future__ import annotations

import json

import pytest

from cmcl import stages


@pytest.fixture
def features(corpus, tmp_path):
    """Feature shards of an image-audio task of the synthetic corpus (no text encoder needed)."""
    from cmcl.embed import embed_split
    from cmcl.shards import shard_task

    task = {"name": "ia", "corpus": "c", "modalities": ["image", "audio"], "pairing": "class",
            "relevance": "label"}
    for split in ("train", "test"):
        shard_task(task, {"path": str(corpus)}, split, tmp_path / f"s_{split}")
        embed_split(tmp_path / f"s_{split}", tmp_path / f"f_{split}",
                    {"image": "pixels", "audio": "mfcc_stats"})
    return task, tmp_path / "f_train", tmp_path / "f_test"


CFG = {"model": {"embed_dim": 8}, "loss": {}, "methods": {},
       "train": {"epochs": 3, "batch_size": 8, "lr": 0.05, "weight_decay": 0.0, "grad_clip": 1.0},
       "eval": {"n_subsets": 1, "subset_size": 100}}


def test_init_train_evaluate_chain(features, tmp_path):
    import pandas as pd

    from cmcl.evaluate import evaluate_step
    from cmcl.train import init_step, load_model, train_step

    task, ftrain, ftest = features
    init_step(CFG, "dns", 1, [ftrain], tmp_path / "step0")
    log = train_step(CFG, "dns", 1, 1, task, ftrain, tmp_path / "step0", tmp_path / "step1")
    meta0 = json.loads((tmp_path / "step0/meta.json").read_text())
    assert log["start_digest"] == meta0["log"]["final_digest"] != log["final_digest"]
    assert (tmp_path / "step1/state/subspace.json").exists()
    model, meta = load_model(tmp_path / "step1")
    assert meta["tasks_seen"] == ["ia"] and meta["options"]["placement"] == "exact"
    df0 = evaluate_step(CFG, tmp_path / "step0", [task], [ftest], tmp_path / "e0.parquet")
    df1 = evaluate_step(CFG, tmp_path / "step1", [task], [ftest], tmp_path / "e1.parquet")
    assert pd.read_parquet(tmp_path / "e1.parquet").equals(df1)
    m0 = df0.set_index("metric").value
    m1 = df1.set_index("metric").value
    assert {"r1", "r5", "r10", "map", "r1_a2b", "map_b2a"} <= set(m1.index)
    assert m1["map"] > m0["map"]  # training on the task improves its retrieval


def test_train_refuses_a_modality_without_head(features, tmp_path):
    from cmcl.train import init_step, train_step

    task, ftrain, _ = features
    init_step(CFG, "finetune", 1, [ftrain], tmp_path / "step0")
    bad = {**task, "modalities": ["image", "depth"]}
    with pytest.raises(ValueError, match="modality 'depth' has no head"):
        train_step(CFG, "finetune", 1, 1, bad, ftrain, tmp_path / "step0", tmp_path / "s1")
    assert not (tmp_path / "s1").exists()


def test_eval_ks_with_20_reaches_metrics_json_and_report(features, tmp_path):
    """eval.ks [1, 5, 20]: evaluate writes R@20, the report summarises and prints it."""
    from cmcl.evaluate import evaluate_step
    from cmcl.report import build_report
    from cmcl.train import init_step, train_step

    task, _, _ = features
    cfg = {**CFG, "train": {**CFG["train"], "epochs": 1}, "eval": {**CFG["eval"], "ks": [1, 5, 20]}}
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
