"""The tuning matrix: per-method spaces and studies, the shared budget, the exported tuned file."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
import yaml
from helpers.data import ROOT

from cmcl.catalog import methods as catalog
from cmcl.config import check
from cmcl.strategies import REGISTRY, Strategy, discover, register
from cmcl.sweep import ChainRunner, best, load_chain_data, open_study, study_name, worker
from cmcl.tuning import export, tune_cfg, tune_matrix

TASKS = {
    "lo": {"corpus": "c", "modalities": ["image", "audio"], "classes": [0, 1],
           "pairing": "class", "relevance": "label"},
    "hi": {"corpus": "c", "modalities": ["image", "audio"], "classes": [2, 3],
           "pairing": "class", "relevance": "label"},
}


def raw_params(corpus: Path) -> dict:
    """params.yaml cut down to two tiny tasks of a temp corpus (schema-complete)."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p |= {"corpora": {"c": {"path": str(corpus)}}, "tasks": TASKS, "sequences": {"s": ["lo", "hi"]},
          "model": {"embed_dim": 8}, "overrides": {}, "variants": {}, "tuned": None,
          "methods": {}, "budget": {"samples": 8}}
    p["train"] |= {"methods": ["finetune", "ewc", "er", "gem"], "seeds": [1], "epochs": 2,
                   "batch_size": 8, "lr": 0.05}
    p["eval"] |= {"n_subsets": 1, "subset_size": 100}
    p["tune"] |= {"n_trials": 3, "n_workers": 1, "n_startup_trials": 2, "val_fraction": 0.25}
    p.pop("sweep", None)
    return p


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    from helpers.data import embedded_tasks

    d = tmp_path_factory.mktemp("tune")
    corpus = embedded_tasks(d, TASKS)
    return d, raw_params(corpus)


@pytest.fixture
def planted():
    """A method whose validation score peaks at x = 0.3: evaluation embeddings get noise
    growing with |x - 0.3| (training is plain fine-tuning)."""
    catalog()  # memoised first: the catalog cached on disk must never list the test method

    @register
    class Planted(Strategy):
        name = "planted"
        options = {"properties": {"x": {"type": "number", "default": 0.9}}}
        space = {"x": {"type": "float", "low": 0.0, "high": 1.0}}
        first_step_ignores = ("x",)

        def embed(self, model, modality, x):
            z = model(modality, x)
            if torch.is_grad_enabled():
                return z
            r = torch.randn(x.shape[1], z.shape[1],
                            generator=torch.Generator().manual_seed(x.shape[1]))
            return z + 20 * abs(self.opts["x"] - 0.3) * torch.sin(x @ r)

    yield Planted
    REGISTRY.pop("planted")  # never let the test method reach the catalog cache


def test_planted_method_ends_at_its_peak_within_the_budget(setup, planted, tmp_path):
    d, raw = setup
    p = check(raw)
    cfg = tune_cfg(p, "s", "planted", space=planted.space)
    cfg["sweep"] |= {"n_trials": 16, "n_startup_trials": 5}
    worker(cfg, d / "features", tmp_path / "journal.log", 0, tmp_path / "w0.json")
    study = open_study(cfg, tmp_path / "journal.log")
    assert len(study.trials) == 16
    assert abs(study.best_params["x"] - 0.3) < 0.1, study.best_params


@pytest.fixture(scope="module")
def studies(setup, tmp_path_factory):
    """finetune and ewc tuned on ONE shared journal: their studies must still stay apart."""
    d, raw = setup
    p = check(raw)
    out = tmp_path_factory.mktemp("studies")
    journal = out / "journal.log"
    cfgs = {m: tune_cfg(p, "s", m) for m in ("finetune", "ewc")}
    for m, cfg in cfgs.items():
        worker(cfg, d / "features", journal, 0, out / f"{m}.json")
    return d, p, cfgs, journal, out


def test_two_methods_studies_stay_apart(studies):
    _, _, cfgs, journal, _ = studies
    names = {m: study_name(c) for m, c in cfgs.items()}
    assert names["finetune"] != names["ewc"]
    got = {s.study_name: s for s in optuna.get_all_study_summaries(open_study(
        cfgs["ewc"], journal)._storage)}
    assert set(got) == set(names.values())
    for cfg in cfgs.values():
        trials = open_study(cfg, journal).get_trials()
        assert len(trials) == 3  # exactly n_trials each, none borrowed from the other study
        assert all(set(t.params) == set(cfg["sweep"]["space"]) for t in trials)
    assert "lambda" in cfgs["ewc"]["sweep"]["space"] and set(
        cfgs["finetune"]["sweep"]["space"]) == {"train.lr"}


def test_a_space_change_restarts_only_its_study(setup):
    _, raw = setup
    p = check(raw)
    before = {m: study_name(tune_cfg(p, "s", m)) for m in ("finetune", "ewc", "er")}
    narrow = check({**raw, "tune": {**raw["tune"], "spaces": {
        "ewc": {"lambda": {"type": "float", "low": 1.0, "high": 10.0, "log": True}}}}})
    after = {m: study_name(tune_cfg(narrow, "s", m)) for m in before}
    assert after["ewc"] != before["ewc"]
    assert after["finetune"] == before["finetune"] and after["er"] == before["er"]
    # adding a method or a seed, or another method's options, restarts nothing
    more = {**raw, "train": {**raw["train"], "methods": [*raw["train"]["methods"], "dns"],
                             "seeds": [1, 2]},
            "methods": {"er": {"weight": 3.0}}}
    again = check(more)
    assert study_name(tune_cfg(again, "s", "ewc")) == before["ewc"]
    assert study_name(tune_cfg(again, "s", "finetune")) == before["finetune"]
    assert ("s", "dns") in tune_matrix(again)
    # ...while the shared data (a task's classes) restarts every study on it
    other = {**raw, "tasks": {**TASKS, "hi": {**TASKS["hi"], "classes": [1, 2]}}}
    assert study_name(tune_cfg(check(other), "s", "ewc")) != before["ewc"]


def test_exported_tuned_file_validates_and_reruns_to_the_recorded_score(studies, tmp_path):
    d, p, cfgs, journal, out = studies
    summaries = {}
    for m, cfg in cfgs.items():
        best(cfg, d / "features", journal, out / m)
        summaries[m] = out / m / "summary.json"
    tuned = export(p, "s", summaries, tmp_path / "tuned.yaml")
    rec = tuned["record"]["methods"]["ewc"]
    assert rec["trials"]["COMPLETE"] + rec["trials"]["PRUNED"] == 3
    assert rec["space"] == cfgs["ewc"]["sweep"]["space"] and rec["default_test"]

    raw = {**raw_params(Path(p["corpora"]["c"]["path"])), "tuned": str(tmp_path / "tuned.yaml")}
    used = check(raw)  # the exported file validates as the default run's `tuned:`
    assert used["methods"]["ewc"]["lambda"] == rec["best"]["lambda"]
    assert used["overrides"]["ewc"]["train"]["lr"] == rec["best"]["train.lr"]
    assert used["overrides"]["finetune"]["train"]["lr"] == \
        tuned["record"]["methods"]["finetune"]["best"]["train.lr"]
    assert used["train"]["lr"] == p["train"]["lr"]  # the shared lr stays every method's default
    # the tuned values are outside the study's identity: adopting them restarts nothing
    assert study_name(tune_cfg(used, "s", "ewc")) == study_name(cfgs["ewc"])
    # the run as the pipeline configures it (tuned options + overrides) reproduces the score
    run = tune_cfg(used, "s", "ewc")
    run["methods"]["ewc"] = used["methods"]["ewc"]
    run["overrides"] = {"ewc": used["overrides"]["ewc"]}
    res = ChainRunner(run, load_chain_data(run, d / "features", "test")).run(run)
    assert res["objective"] == pytest.approx(rec["test"]["objective"], abs=1e-5)
    # the report says how each number was obtained: space, budget, chosen values, scores
    from cmcl.report_tuning import markdown_tuning

    md = "\n".join(markdown_tuning(tuned["record"], ["finetune", "ewc"], "map"))
    assert "3 Optuna trials" in md and "lambda ∈ [1, 1e+05] log" in md
    assert f"lambda: {rec['best']['lambda']:.3g}" in md and f"{rec['validation']:.4f}" in md
    assert "Equal memory: 8 stored samples" in md and "#### Defaults vs tuned" in md
    # params.yaml's own value wins over the tuned one
    mine = check({**raw, "methods": {"ewc": {"lambda": 7.0}}})
    assert mine["methods"]["ewc"]["lambda"] == 7.0


def test_budget_sets_every_storing_method_and_refuses_another_size(setup):
    _, raw = setup
    p = check(raw)
    assert p["methods"]["er"]["memory_size"] == 8 and p["methods"]["derpp"]["memory_size"] == 8
    assert p["methods"]["gem"]["memory_per_task"] == 4  # 8 samples over 2 tasks
    with pytest.raises(ValueError, match="methods.er.memory_size: 9 is not the shared budget"):
        check({**raw, "methods": {"er": {"memory_size": 9}}})
    assert all(m in discover() for m in p["train"]["methods"])


@pytest.mark.parametrize("method", ["er", "gem", "comm", "ewc"])
def test_resources_column_equals_what_the_method_stores(setup, tmp_path, method):
    from cmcl.io import load_tensors, read_json
    from cmcl.resources import measure
    from cmcl.stages import strategy_cfg, train_cfg
    from cmcl.train import init_step, train_step

    d, raw = setup
    p = check(raw)
    feats = [d / f"features/{t}/train" for t in TASKS]
    init_step({"model": p["model"], **strategy_cfg(p, method)}, method, 1, feats,
              tmp_path / "step0")
    for step, f in enumerate(feats, 1):
        cfg = train_cfg(p, "s", method, step)
        train_step(cfg, method, 1, step, cfg["task"], f, tmp_path / f"step{step - 1}",
                   tmp_path / f"step{step}")
    state = tmp_path / "step2/state"
    got = measure(tmp_path / "step2")
    assert got["state_bytes"] == sum(f.stat().st_size for f in state.rglob("*") if f.is_file())
    assert got["state_bytes"] > 0  # buffers, Fisher + anchors, Gaussians + adapters
    memory = {"er": "buffer.json", "gem": "memory.json"}.get(method)
    stored = read_json(state / memory)["size"] if memory else 0
    assert got["samples"] == stored == {"er": 8, "gem": 8}.get(method, 0)  # = budget.samples
    adapters = load_tensors(state / "comm.safetensors") if method == "comm" else {}
    assert got["extra_params"] == sum(t.numel() for t in adapters.values())
    assert (got["extra_params"] > 0) == (method == "comm")


@pytest.mark.parametrize("method", ["finetune", "dns", "er", "derpp", "comm"])
def test_a_trial_scores_what_the_pipeline_trains(setup, tmp_path, method):
    """The sweep's in-process chain and the pipeline's init/train/evaluate jobs give the same
    accuracy matrix for the same settings (replay draws and RNG states included), so tuned and
    default numbers in the report are comparable."""
    from cmcl import stages
    from cmcl.evaluate import evaluate_step
    from cmcl.train import init_step, train_step

    d, raw = setup
    p = check(raw)
    feats = [d / f"features/{t}/train" for t in TASKS]
    tests = [d / f"features/{t}/test" for t in TASKS]
    ev = stages.evaluate(p, "s")
    init_step(stages.init(p, method).values | stages.strategy_cfg(p, method), method, 1, feats,
              tmp_path / "step0")
    rows = []
    for step in range(len(TASKS) + 1):
        if step:
            cfg = stages.train_cfg(p, "s", method, step)
            train_step(cfg, method, 1, step, cfg["task"], feats[step - 1],
                       tmp_path / f"step{step - 1}", tmp_path / f"step{step}")
        df = evaluate_step(ev.values, tmp_path / f"step{step}", ev.values["tasks"], tests,
                           tmp_path / f"e{step}.parquet", "s")
        rows.append([float(df[(df.eval_task == t) & (df.metric == "map")].value.iloc[0])
                     for t in TASKS])
    cfg = tune_cfg(p, "s", method)
    cfg["methods"][method] = p["methods"].get(method, {})  # the values the pipeline ran
    res = ChainRunner(cfg, load_chain_data(cfg, d / "features", "test"), seed=1).run(cfg)
    assert res["matrix"] == rows  # same code, same order of operations: equal bit for bit


def test_adopting_tuned_values_restarts_no_study(setup):
    """A tuned file sets a method's swept options and train keys: its study keeps its name and
    its workers' params, so adopting the values reruns and restarts nothing (DNS has options
    outside its space, which a tuned file brings in with their defaults)."""
    from cmcl import stages

    _, raw = setup
    raw = {**raw, "train": {**raw["train"], "methods": ["finetune", "dns"]}}
    before = check(raw)
    tuned = check({**raw, "methods": {"dns": {"threshold_in": 0.01, "threshold_out": 0.02}},
                   "overrides": {"dns": {"train": {"lr": 0.01}},
                                 "finetune": {"train": {"lr": 0.02}}}})
    for method in ("dns", "finetune"):
        assert study_name(tune_cfg(tuned, "s", method)) == \
            study_name(tune_cfg(before, "s", method)), method
        assert stages.tune(tuned, "s", method).params() == \
            stages.tune(before, "s", method).params(), method


def test_committed_journals_name_the_studies_the_code_runs():
    """pipeline/params/tuned/journals/<seq>/<m>.log.gz hold the studies `snakemake tune` opens
    (same name: same trial identity), so unpacking them rebuilds the tuned file without a
    trial; a change that renames studies must re-tune and commit new journals."""
    import gzip
    import json

    from cmcl import stages
    from cmcl.config import load
    from cmcl.schema import complete

    p = load(ROOT / "params.yaml")
    folder = ROOT / "pipeline/params/tuned/journals/digits"
    for m in p["train"]["methods"]:
        with gzip.open(folder / f"{m}.log.gz", "rt") as f:
            created = json.loads(f.readline())
        cfg = complete(json.loads(stages.tune(p, "digits", m).params()))
        assert created["study_name"] == study_name(cfg), m
