"""End to end: the real Snakemake workflow and `dvc repro` on a tiny params file in a temp dir."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers.data import ROOT

BIN = str(Path(sys.executable).parent)


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n"
                             f"{p.stderr[-5000:]}")
    return p


SEQ = ["t1_text_image_04", "t2_text_audio", "t3_image_audio"]
REV = ["t2_text_audio", "t1_text_image_04"]  # a second sequence of the matrix, same features


def tiny_params() -> dict:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["sequences"] = {"main": SEQ, "rev": REV}
    p["tasks"] = {k: v for k, v in p["tasks"].items() if k in SEQ}
    p["shard"]["max_per_class"] = 12
    p["train"] |= {"methods": ["finetune", "dns", "joint", "dns_in"], "seeds": [1], "epochs": 2}
    p["overrides"] = {"joint": {"train": {"epochs": 3}}}
    p["variants"] = {"dns_in": {"method": "dns", "options": {"sides": "input"},
                                "train": {"lr_schedule": "linear"},
                                "description": "input side only"}}
    p["eval"] |= {"n_subsets": 2, "subset_size": 40}
    return p


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A fresh copy of the workflow with a tiny params.yaml, run once with Snakemake."""
    d = tmp_path_factory.mktemp("proj")
    for name in ("Snakefile", "dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, d / name)
    shutil.copytree(ROOT / "pipeline", d / "pipeline")
    shutil.copytree(ROOT / "src", d / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (d / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    run([f"{BIN}/snakemake", "--cores", "2"], d)
    return d


def test_outputs_cover_every_step_and_task(project):
    df = pd.concat(pd.read_parquet(f) for f in (project / "results/eval").rglob("*.parquet"))
    assert set(df.columns) == {"sequence", "run", "method", "seed", "step", "eval_task",
                               "metric", "value"}
    for seq, names in (("main", SEQ), ("rev", REV)):
        for method in ("finetune", "dns"):
            sub = df[(df.sequence == seq) & (df.method == method) & (df.metric == "map")]
            assert set(zip(sub.step, sub.eval_task, strict=True)) == {
                (s, t) for s in range(len(names) + 1) for t in names}
            assert sub.value.between(0, 1).all()
        joint = df[(df.sequence == seq) & (df.method == "joint") & (df.metric == "map")]
        assert set(joint.step) == {0, len(names)} and set(joint.eval_task) == set(names)
    zs = df[df.metric == "zs_acc"]
    assert set(zs.eval_task) == set(SEQ)  # every task here has labels
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert list(metrics) == ["main", "rev"]
    for seq in metrics:
        assert set(metrics[seq]) == {"finetune", "dns", "joint", "dns_in"}
        joint = metrics[seq]["joint"]
        assert joint["map_final_avg"] is not None and joint["map_bwt"] is None
    report = (project / "reports/report.md").read_text()
    assert "label-aware" in report and "dns" in report and "Pairs train/test" in report
    assert "## Overview" in report and "## Sequence `rev`" in report


def test_checkpoints_chain_step_to_step(project):
    for seq, names in (("main", SEQ), ("rev", REV)):
        for method in ("finetune", "dns"):
            run_dir = project / f"results/runs/{seq}/{method}/seed1"
            metas = [json.loads((run_dir / f"step{s}/meta.json").read_text())
                     for s in range(len(names) + 1)]
            for prev, cur in zip(metas, metas[1:], strict=False):
                assert cur["log"]["start_digest"] == prev["log"]["final_digest"]
                assert cur["log"]["final_digest"] != prev["log"]["final_digest"]
                assert len(cur["log"]["epoch_loss"]) == 2
            assert metas[-1]["tasks_seen"] == names
    joint = json.loads((project / "results/runs/main/joint/seed1/step3/meta.json").read_text())
    assert joint["tasks_seen"] == SEQ
    assert len(joint["log"]["epoch_loss"]) == 3  # overrides.joint.train.epochs
    assert joint["log"]["pairs"] == sum(
        json.loads((project / f"data/features/{t}/train/meta.json").read_text())["count"]
        for t in SEQ)
    state = json.loads(
        (project / "results/runs/main/dns/seed1/step3/state/subspace.json").read_text())
    assert state["counts"]["in"]["image"] > 0 and len(state["history"]) == 3


def test_a_variant_is_a_run_of_its_own(project):
    """dns_in runs dns with sides: input and a linear schedule: its own folder, meta, rows."""
    for seq, names in (("main", SEQ), ("rev", REV)):
        last = f"results/runs/{seq}/{{}}/seed1/step{len(names)}/meta.json"
        variant = json.loads((project / last.format("dns_in")).read_text())
        base = json.loads((project / last.format("dns")).read_text())
        assert (variant["method"], variant["run"], variant["options"]["sides"]) == \
            ("dns", "dns_in", "input")
        assert base["options"]["sides"] == "both" and base["run"] == "dns"
        assert variant["log"]["final_digest"] != base["log"]["final_digest"]
    df = pd.read_parquet(project / "results/eval/main/dns_in/seed1/step3.parquet")
    assert set(df["method"]) == {"dns_in"} and set(df["run"]) == {"dns_in_s1"}
    report = (project / "reports/report.md").read_text()
    assert "## Method variants" in report
    assert '| dns_in | dns | lr_schedule: "linear", sides: "input" | input side only |' in report
    p = run([sys.executable, "-m", "cmcl", "compare", "dns", "dns_in"], project)
    assert "map_bwt" in p.stdout


def test_dvc_repro_is_idempotent_and_reruns_only_late_jobs(project):
    run(["git", "init", "-q"], project)
    run(["dvc", "init", "-q"], project)
    run(["dvc", "repro"], project)  # records dvc.lock; Snakemake finds nothing to do
    models = sorted((project / "results/runs").rglob("model.safetensors"))
    stamps = {m: m.stat().st_mtime_ns for m in models}
    second = run(["dvc", "repro"], project)
    assert "didn't change" in second.stdout and "Running stage" not in second.stdout

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["eval"]["subset_size"] = 30
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run(["dvc", "repro"], project)
    assert "Running stage 'pipeline'" in third.stdout
    assert "Running stage 'corpus'" not in third.stdout
    log = sorted((project / ".snakemake/log").glob("*.log"))[-1].read_text()
    assert "rule evaluate" in log and "rule report" in log
    for rule in ("rule train", "rule embed", "rule shard", "rule init"):
        assert rule not in log, f"a late param change reran {rule}"
    assert {m: m.stat().st_mtime_ns for m in models} == stamps

    # the DVC way of sweeping: an experiment with one param changed, listed with its metrics
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"], project)
    run(["dvc", "exp", "run", "-S", "eval.subset_size=25", "-n", "small-gallery"], project)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    text = json.dumps(shown)
    assert "small-gallery" in text and "map_final_avg" in text
    assert {m: m.stat().st_mtime_ns for m in models} == stamps  # no retraining either

    # metrics.json and plot CSVs are committed (cache: false), so a diff has an old side
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], project).stdout)
    assert any(v["old"] is not None and v["new"] is not None
               for v in diff["reports/metrics.json"].values()), diff
    plots = json.loads(run(["dvc", "plots", "diff", "--json"], project).stdout)["data"]
    for entry in yaml.safe_load((project / "dvc.yaml").read_text())["plots"]:
        (path,) = entry  # {file: x/y settings}
        (plot,) = plots[path]
        assert {row["rev"] for row in plot["content"]["data"]["values"]} == {"HEAD", "workspace"}


def test_bad_params_fail_before_any_job(project, tmp_path):
    for key, value, expect in (
        (("train", "methods"), ["nope"], "train.methods[0]: 'nope' is not a registered method"),
        (("methods", "dns"), {"threshold_in": -1}, "methods.dns.threshold_in: -1 is less than"),
        (("train", "epochs"), -1, "train.epochs: -1 is less than the minimum of 1"),
        (("corpora", "mine"), {"path": "no/such/dir"}, "corpora.mine.path: folder 'no/such"),
    ):
        params = tiny_params()
        params[key[0]][key[1]] = value
        if key[0] == "corpora":  # a corpus must exist once a sequence's task reads it
            params["tasks"]["tm"] = {"corpus": "mine", "modalities": ["text", "image"]}
            params["sequences"]["extra"] = ["tm"]
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(yaml.safe_dump(params))
        p = run([f"{BIN}/snakemake", "-n", "--configfile", str(cfg)], project, check=False)
        assert p.returncode != 0
        assert expect in p.stderr + p.stdout


def test_snakemake_lint_is_clean(project):
    p = run([f"{BIN}/snakemake", "--lint"], project, check=False)
    assert p.returncode == 0, p.stdout + p.stderr


def test_html_report_compare_and_check(project):
    run([f"{BIN}/snakemake", "--report", "report.html"], project)
    assert (project / "report.html").stat().st_size > 100_000  # figures are embedded
    p = run([sys.executable, "-m", "cmcl", "compare", "finetune", "dns"], project)
    assert "map_bwt" in p.stdout and "B - A" in p.stdout
    check = json.loads((project / "reports/check.json").read_text())
    # tiny params differ from the defaults the expected file was recorded with
    assert check["ok"] and all(r["status"].startswith("not checked") for r in check["rows"])


def test_checkpoint_every_reaches_the_job_and_reruns_nothing(project, tmp_path):
    """How often a step checkpoints cannot change its result: on a finished pipeline a new
    train.checkpoint_every (or a method's override of it) plans no job, and a train job that
    does run is handed the value its method trains with."""
    changed = tmp_path / "checkpoints.yaml"
    changed.write_text(yaml.safe_dump({"train": {"checkpoint_every": 7},
                                       "overrides": {"dns": {"train": {"checkpoint_every": 5}}}}))
    p = run([f"{BIN}/snakemake", "-n", "--configfile", str(changed)], project)
    assert "Nothing to be done" in p.stdout + p.stderr, p.stdout[-3000:]
    steps = {m: f"results/runs/main/{m}/seed1/step2" for m in ("finetune", "dns")}
    p = run([f"{BIN}/snakemake", *steps.values(), "-n", "-p", "--configfile", str(changed),
             "--forcerun", *steps.values()], project)
    commands = [line for line in p.stdout.splitlines() if "cmcl train" in line]
    assert len(commands) == 2
    for method, every in (("finetune", 7), ("dns", 5)):
        assert any(f"--method {method} " in c and f"--checkpoint-every {every} " in c
                   for c in commands), commands


def test_dvc_plots_name_columns_the_report_writes(project):
    for entry in yaml.safe_load((project / "dvc.yaml").read_text())["plots"]:
        ((path, spec),) = entry.items()
        columns = set(pd.read_csv(project / path, nrows=1).columns)
        assert {spec["x"], spec["y"]} <= columns, (path, spec, columns)


def test_a_failed_job_says_why_on_the_console(project, tmp_path):
    """Plain `snakemake` names only a failed job's log; the Snakefile's onerror prints the
    job's own error line (file, sample, what to do) on stderr."""
    from helpers.data import make_corpus

    corpus = make_corpus(tmp_path / "dup")
    manifest = corpus / "manifest.jsonl"
    first = manifest.read_text().splitlines()[0]
    manifest.write_text(manifest.read_text() + first + "\n")  # one id twice
    cfg = tmp_path / "dup.yaml"
    cfg.write_text(yaml.safe_dump({
        "corpora": {"dup": {"path": str(corpus)}},
        "tasks": {"dup_t": {"corpus": "dup", "modalities": ["text", "image"]}}}))
    p = run([f"{BIN}/snakemake", "--cores", "1", "data/shards/dup_t/test", "--configfile",
             str(cfg)], project, check=False)
    assert p.returncode != 0
    assert "cmcl: rule shard failed; logs/shard/dup_t_test.log says:" in p.stderr
    assert "have the same id 'i00'" in p.stderr, p.stderr[-3000:]
