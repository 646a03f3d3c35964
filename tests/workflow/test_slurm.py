"""The tiny pipeline through a real single-node Slurm cluster equals a local run.

The fixture starts munge, MariaDB, slurmdbd, slurmctld and slurmd from Debian's packages
(tests/helpers/slurm.py; installs them with apt-get when missing) and the workflow runs with
`--profile pipeline/profiles/slurm`, exactly as a user would, in one copy of the project, and
with `--cores 2` in another; the Slurm run also runs a 2-worker Optuna sweep (two worker jobs on
one journal). Needs root (daemons, /etc/slurm/slurm.conf); skipped otherwise.

In CI (the default test set): every job starts two snakemake processes and one
`python -m cmcl`, and the executor plugin polls at growing intervals, so the tiny matrix is kept
to one method.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import slurm as slurm_cluster
from helpers.data import ROOT

BIN = str(Path(sys.executable).parent)
TIMEOUT = 900  # seconds for one snakemake run; killed with SIGKILL after that
# not resources and check: `localrules` (Snakefile), run by the submitting snakemake
RULES = {"corpus", "shard", "embed", "init", "train", "evaluate", "report", "sweep_worker",
         "sweep_best"}
N_TRIALS = 4


def env(project: Path) -> dict[str, str]:
    """The venv's bin first on PATH and the copy's own src first on PYTHONPATH (not the
    editable install's tree, which may change while the test runs); sbatch's `--export=ALL`
    hands both to the jobs' `python -m cmcl`."""
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
            "PYTHONPATH": str(project / "src"), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg"}


def start(cmd: list[str], cwd: Path, timeout: int = TIMEOUT) -> subprocess.Popen:
    """Start under `timeout -s KILL`; stdout and stderr go to <cwd>.log beside the project."""
    with open(cwd.parent / f"{cwd.name}.log", "w") as log:
        return subprocess.Popen(["timeout", "-s", "KILL", str(timeout), *cmd], cwd=cwd,
                                env=env(cwd), stdout=log, stderr=subprocess.STDOUT)


def finish(p: subprocess.Popen, cwd: Path) -> str:
    """Wait; after a kill, unlock the workflow so a rerun can start; raise on failure."""
    rc = p.wait()
    out = (cwd.parent / f"{cwd.name}.log").read_text(errors="replace")
    if rc in (-9, 137):
        subprocess.run([f"{BIN}/snakemake", "--unlock"], cwd=cwd, env=env(cwd),
                       capture_output=True, timeout=120)
    if rc != 0:
        raise AssertionError(f"{' '.join(p.args)} in {cwd} failed ({rc}):\n{out[-10000:]}")
    return out


def tiny_params() -> dict:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["sequences"] = {"digits": ["t1_text_image_04", "t2_text_audio"]}
    p["tasks"] = {k: v for k, v in p["tasks"].items() if k in p["sequences"]["digits"]}
    p["shard"]["max_per_class"] = 10
    p["train"] |= {"methods": ["dns"], "seeds": [1], "epochs": 1}
    p["eval"] |= {"n_subsets": 2, "subset_size": 40}
    p["sweep"] |= {"study": "slurm", "n_trials": N_TRIALS, "n_workers": 2, "n_startup_trials": 2}
    return p


def copy_project(d: Path) -> Path:
    d.mkdir(parents=True)
    for name in ("Snakefile", "dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, d / name)
    shutil.copytree(ROOT / "pipeline", d / "pipeline")
    shutil.copytree(ROOT / "src", d / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (d / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    return d


@pytest.fixture(scope="module")
def cluster():
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("a test Slurm cluster needs root on Linux")
    if slurm_cluster.missing_binaries() and slurm_cluster.which("apt-get") is None:
        pytest.skip("Slurm is not installed and there is no apt-get to install it")
    slurm_cluster.ensure_installed()
    # jobs are mostly start-up and polling waits: 4 slots on 2 cores finish a DAG level a round
    with slurm_cluster.SlurmCluster(cpus=max(4, os.cpu_count() or 1)) as c:
        yield c


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """The same tiny project run through Slurm and, overlapping it, locally."""
    base = tmp_path_factory.mktemp("slurm")
    local = copy_project(base / "local")
    remote = base / "slurm"
    shutil.copytree(local, remote)  # the same snapshot of the code in both
    profile = remote / "pipeline/profiles/slurm/config.yaml"
    cfg = yaml.safe_load(profile.read_text())
    cfg["default-resources"]["slurm_partition"] = cluster.partition  # the user's one edit
    profile.write_text(yaml.safe_dump(cfg, sort_keys=False))
    # --slurm-no-account: unused by plugin 2.8.0 (it guesses, fails, submits without -A); kept
    slurm_cmd = [f"{BIN}/snakemake", "--profile", "pipeline/profiles/slurm", "--slurm-no-account",
                 "--slurm-init-seconds-before-status-checks", "2", "--jobs", "4",
                 "--slurm-keep-successful-logs", "all", "sweep"]
    t0, cpu0 = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    slurm = start(slurm_cmd, remote)
    try:
        # the slow corpus job runs once, on Slurm; the local run copies it and overlaps the polls
        corpus = Path(tiny_params()["corpora"]["digits"]["path"])
        while not (remote / corpus).is_dir() and slurm.poll() is None:  # written atomically
            time.sleep(1)
        if (remote / corpus).is_dir():
            shutil.copytree(remote / corpus, local / corpus)
        t_corpus = time.monotonic() - t0
        finish(start([f"{BIN}/snakemake", "--cores", "2"], local), local)
        t_local = time.monotonic() - t0
    except BaseException:
        slurm.terminate()  # `timeout` passes SIGTERM on; snakemake then scancels its jobs
        slurm.wait(timeout=120)
        raise
    slurm_log = finish(slurm, remote)
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    jobs_cpu = sum(_seconds(j["TotalCPU"]) for j in cluster.sacct("TotalCPU", workdir=remote,
                                                                steps=True))
    print(f"\nSlurm run {time.monotonic() - t0:.0f}s (its corpus job {t_corpus:.0f}s); "
          f"local run done at {t_local:.0f}s; CPU: Slurm jobs {jobs_cpu:.0f}s, local run and "
          f"submitting snakemake {ours:.0f}s")
    return {"local": local, "slurm": remote, "slurm_log": slurm_log}


def _seconds(t: str) -> float:
    """sacct's [DD-[HH:]]MM:SS[.mmm] -> seconds."""
    days, _, t = t.rpartition("-")
    parts = [float(x) for x in t.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0.0)
    return (float(days or 0) * 24 + parts[0]) * 3600 + parts[1] * 60 + parts[2]


def outputs(d: Path) -> set[str]:
    """The pipeline's outputs (not the sweep's, which only the Slurm copy runs)."""
    return {str(f.relative_to(d)) for sub in ("data", "results/runs", "results/eval", "reports")
            for f in (d / sub).rglob("*") if f.is_file() and f.name != ".snakemake_timestamp"
            and not str(f.relative_to(d)).startswith("reports/sweep")}


def test_jobs_ran_through_slurm(cluster, runs):
    jobs = cluster.sacct("JobID", "JobName", "State", "Comment", workdir=runs["slurm"])
    assert jobs, f"sacct lists no job of {runs['slurm']}:\n{runs['slurm_log'][-3000:]}"
    assert {j["State"] for j in jobs} == {"COMPLETED"}, jobs
    rules = {j["Comment"].split("_wildcards")[0].removeprefix("rule_") for j in jobs}
    assert rules == RULES, rules
    for name in ("reports/resources.json", "reports/check.json"):  # made by the local rules
        assert (runs["slurm"] / name).is_file(), name
    logs = list((runs["slurm"] / ".snakemake/slurm_logs").rglob("*.log"))
    assert len(logs) == len(jobs)  # one plugin log per job (kept with --slurm-keep-...)
    assert not cluster.sacct(workdir=runs["local"])  # the local run stayed local


def test_slurm_outputs_equal_local_run(runs):
    local, remote = runs["local"], runs["slurm"]
    assert outputs(local) and outputs(local) == outputs(remote)
    evals = sorted((local / "results/eval").rglob("*.parquet"))
    assert len(evals) == 3  # steps 0..2
    for f in evals:
        a = pd.read_parquet(f)
        b = pd.read_parquet(remote / f.relative_to(local))
        keys = [c for c in a.columns if c != "value"]
        a, b = (x.sort_values(keys).reset_index(drop=True) for x in (a, b))
        pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-6, rtol=0)
    digests = 0
    for meta in (local / "results/runs").rglob("step*/meta.json"):
        ours = json.loads(meta.read_text()).get("log", {})
        theirs = json.loads((remote / meta.relative_to(local)).read_text()).get("log", {})
        assert ours.get("final_digest") == theirs.get("final_digest"), meta
        digests += ours.get("final_digest") is not None
    assert digests == 3  # every step's weights (init and trained) are bit-identical
    m_local = json.loads((local / "reports/metrics.json").read_text())
    m_slurm = json.loads((remote / "reports/metrics.json").read_text())
    assert m_local.keys() == m_slurm.keys()


def test_two_sweep_workers_ran_as_slurm_jobs_on_one_journal(cluster, runs):
    """N worker jobs = N cluster jobs sharing one Optuna journal: exactly n_trials, no
    duplicate trial numbers, and best.yaml exported."""
    import optuna

    from cmcl.config import load
    from cmcl.sweep import open_study

    jobs = cluster.sacct("JobID", "Comment", "State", "Elapsed", workdir=runs["slurm"])
    workers = [j for j in jobs if j["Comment"].startswith("rule_sweep_worker")]
    assert len(workers) == 2 and {j["State"] for j in workers} == {"COMPLETED"}, jobs
    print(f"\nsweep worker jobs ran {[j['Elapsed'] for j in workers]} (Slurm elapsed)")
    remote = runs["slurm"]
    params = load(remote / "params.yaml", remote / "pipeline/schemas/params.schema.yaml")
    trials = open_study(params, remote / "results/sweep/slurm/journal.log").get_trials()
    assert sorted(t.number for t in trials) == list(range(N_TRIALS))
    assert {t.state for t in trials} <= {optuna.trial.TrialState.COMPLETE,
                                         optuna.trial.TrialState.PRUNED}
    per_worker = [json.loads((remote / f"results/sweep/slurm/worker{i}.json").read_text())
                  for i in range(2)]
    assert sum(len(w["trials"]) for w in per_worker) == N_TRIALS
    best = yaml.safe_load((remote / "reports/sweep/slurm/best.yaml").read_text())
    assert "threshold_in" in best["methods"]["dns"]
