"""dvc.yaml's metrics and plots are files the report rule writes, left to git (`cache: false`,
not git-ignored), so `dvc metrics diff` and `dvc plots diff` can compare commits; every plot CSV
the report writes at the top of reports/plots/ is declared. A dry run only."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.data import ROOT

BIN = str(Path(sys.executable).parent)


def declared() -> tuple[list[str], dict[str, dict]]:
    """dvc.yaml's metrics files and its plots as {file: its x/y/template settings}."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    metrics = list(spec.get("metrics", []))
    plots: dict[str, dict] = {}
    for entry in spec.get("plots", []):
        (name, settings), = (entry.items() if isinstance(entry, dict) else [(entry, {})])
        settings = settings or {}
        ys = settings.get("y")
        files = list(ys) if isinstance(ys, dict) else [name]  # {file: column} or the name
        for f in files:
            plots[f] = settings
    for stage in spec["stages"].values():  # stage-level metrics/plots count too
        for kind, into in (("metrics", metrics), ("plots", plots)):
            for out in stage.get(kind, []):
                f = next(iter(out)) if isinstance(out, dict) else out
                if kind == "metrics":
                    into.append(f)
                else:
                    into.setdefault(f, {})
    return metrics, plots


@pytest.fixture(scope="module")
def report_outputs(tmp_path_factory) -> set[str]:
    """What the report rule writes for the default params.yaml, read from a dry run."""
    d = tmp_path_factory.mktemp("dvcdecl")
    for name in ("Snakefile", "params.yaml"):
        shutil.copy(ROOT / name, d / name)
    shutil.copytree(ROOT / "pipeline", d / "pipeline")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    p = subprocess.run([f"{BIN}/snakemake", "-n", "--forceall", "reports/metrics.json"], cwd=d,
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    block = re.search(r"^rule report:\n(.*?)^\S", p.stdout, flags=re.M | re.S)
    assert block, p.stdout[-3000:]
    line = next(x for x in block.group(1).splitlines() if x.strip().startswith("output:"))
    return {f.strip() for f in line.split(":", 1)[1].split(",")}


def test_declared_metrics_and_plots_are_written_by_the_report_rule(report_outputs):
    metrics, plots = declared()
    assert metrics and plots
    missing = [f for f in [*metrics, *plots] if f not in report_outputs]
    assert not missing, f"dvc.yaml declares files the report rule does not write: {missing}"


def test_every_top_level_plot_csv_of_the_report_is_declared(report_outputs):
    _, plots = declared()
    csvs = {f for f in report_outputs if re.fullmatch(r"reports/plots/[^/]+\.csv", f)}
    assert csvs, sorted(report_outputs)
    assert not csvs - set(plots), f"undeclared plot CSVs: {sorted(csvs - set(plots))}"
    for f, settings in plots.items():
        if f.endswith(".csv"):
            assert settings.get("x") and settings.get("y"), f"{f}: plots need x and y"


def test_metrics_and_plots_are_left_to_git():
    """A cached out is git-ignored by DVC and an ignored file is in no commit: either way the
    diff across commits would have nothing to compare."""
    metrics, plots = declared()
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    outs = {}
    for stage in spec["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind, []):
                path, opts = next(iter(out.items())) if isinstance(out, dict) else (out, {})
                outs[path] = opts or {}
    for f in [*metrics, *plots]:
        owner = [p for p in outs if f == p or f.startswith(p.rstrip("/") + "/")]
        assert owner, f"{f}: no stage of dvc.yaml produces it"
        assert outs[owner[0]].get("cache") is False, f"{f}: in a cached out ({owner[0]})"
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    files = [*metrics, *plots]
    p = subprocess.run(["git", "check-ignore", "--no-index", *files], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.stdout.strip() == "", f"git-ignored, so never committed: {p.stdout.split()}"
