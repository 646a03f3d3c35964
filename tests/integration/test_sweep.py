"""Optuna sweeps: concurrent workers on one journal, pruning, best.yaml reruns to its score."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest
import yaml

from cmcl.sweep import ChainRunner, apply, load_chain_data, open_study, study_name

TASKS = {
    "lo": {"corpus": "c", "modalities": ["image", "audio"], "classes": [0, 1],
           "pairing": "class", "relevance": "label"},
    "hi": {"corpus": "c", "modalities": ["image", "audio"], "classes": [2, 3],
           "pairing": "class", "relevance": "label"},
}


@pytest.fixture(scope="module")
def sweep_setup(tmp_path_factory):
    from helpers.data import embedded_tasks

    d = tmp_path_factory.mktemp("sweep")
    embedded_tasks(d, TASKS)
    params = {
        "tasks": TASKS, "sequences": {"s": ["lo", "hi"]}, "shard": {}, "embed": {},
        "model": {"embed_dim": 8, "bias": False, "init": "orthogonal"},
        "loss": {"temperature": 0.1, "normalize": True, "symmetric": True},
        "train": {"methods": ["dns"], "seeds": [1], "epochs": 2, "batch_size": 8, "lr": 0.05,
                  "weight_decay": 0.0, "grad_clip": 1.0, "deterministic": True},
        "eval": {"ks": [1, 5, 10], "n_subsets": 1, "subset_size": 100, "seed": 0},
        "methods": {"dns": {}},
        "sweep": {"study": "t", "method": "dns", "storage": None, "n_trials": 8, "n_workers": 2,
                  "n_startup_trials": 2, "seed": 0, "val_fraction": 0.25,
                  "objective": {"metric": "map", "bwt_weight": 1.0},
                  "space": {"threshold_in": {"type": "float", "low": 1e-6, "high": 0.5,
                                             "log": True},
                            "train.lr": {"type": "float", "low": 0.01, "high": 0.1}}},
    }
    return d, params


def test_two_concurrent_workers_run_exactly_n_trials(sweep_setup):
    d, params = sweep_setup
    journal = d / "journal.log"
    procs = [subprocess.Popen([sys.executable, "-m", "cmcl", "sweep-worker", "--cfg",
                               json.dumps(params), "--features-root", str(d / "features"),
                               "--journal", str(journal), "--worker", str(i), "--out",
                               str(d / f"w{i}.json")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    trials = open_study(params, journal).get_trials()
    numbers = sorted(t.number for t in trials)
    assert numbers == list(range(8)), numbers  # no duplicate, no lost trial, no overshoot
    states = {t.state for t in trials}
    assert states <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    per_worker = [json.loads((d / f"w{i}.json").read_text())["trials"] for i in range(2)]
    assert sum(map(len, per_worker)) == 8 and all(per_worker), "both workers must contribute"

    from cmcl.sweep import best

    summary = best(params, d / "features", journal, d / "out")
    for f in ("best.yaml", "summary.json", "history.png", "importances.png", "slice.png"):
        assert (d / "out" / f).stat().st_size > 0
    override = yaml.safe_load((d / "out/best.yaml").read_text())
    # the swept method's own: its option under methods.dns, its lr under overrides.dns.train
    assert set(override) == {"methods", "overrides"}
    assert "threshold_in" in override["methods"]["dns"]
    assert set(override["overrides"]) == {"dns"} and "lr" in override["overrides"]["dns"]["train"]
    assert "# use: snakemake --cores all --configfile <the --configfile files the study ran " \
        "with> " in (d / "out/best.yaml").read_text()  # no sources given: says where they go
    # best.yaml reruns to the same validation score (deterministic training on CPU)
    rerun = ChainRunner(params, load_chain_data(params, d / "features", "val")).run(
        apply(params, summary["best"]["params"], "dns"))
    assert rerun["objective"] == pytest.approx(summary["best"]["value"], abs=1e-9)
    assert summary["test"]["objective"] > 0  # test scores are computed once, after the sweep


def test_validation_never_touches_test_and_first_step_is_reused(sweep_setup):
    d, params = sweep_setup
    data = load_chain_data(params, d / "features", "val")
    tr, val = data["lo"]
    assert len(tr["labels"]) + len(val["labels"]) == 20 and len(val["labels"]) == 5
    runner = ChainRunner(params, data)
    a = runner.run(apply(params, {"threshold_in": 1e-3}, "dns"))
    assert len(runner.cache) == 1  # DNS step 1 is plain training: cached
    b = runner.run(apply(params, {"threshold_in": 0.3}, "dns"))
    assert len(runner.cache) == 1  # ...and reused by a trial with other thresholds
    assert a["matrix"][1] == b["matrix"][1]  # identical after step 1
    fresh = ChainRunner(params, data).run(apply(params, {"threshold_in": 0.3}, "dns"))
    assert fresh["objective"] == pytest.approx(b["objective"], abs=1e-9)  # reuse is exact


def test_study_name_follows_the_space(sweep_setup):
    _, params = sweep_setup
    other = {**params, "sweep": {**params["sweep"], "space": {
        "threshold_out": {"type": "float", "low": 1e-6, "high": 0.5, "log": True}}}}
    assert study_name(params) != study_name(other)
