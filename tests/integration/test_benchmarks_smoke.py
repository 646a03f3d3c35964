"""Smoke test of the benchmark suite: `benchmarks/run_all.py --quick` into a temp results dir.

The fast test runs the three in-process benchmarks (subspace step cost, training throughput,
shard I/O); the slow one adds the paper-scale chain and the orchestration dry run (child
processes and Snakemake).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.data import ROOT

RUN_ALL = ROOT / "benchmarks" / "run_all.py"
CORE_KEYS = ["dns_step_overhead", "gpm_step_overhead", "adam_nscl_step_overhead",
             "train_throughput_vs_bare", "train_throughput_vs_bare_d768",
             "train_throughput_vs_bare_d1024", "cmcl_train_samples_per_s_d1024",
             "bare_train_samples_per_s_d1024", "train_shard_read_samples_per_s_d1024",
             "shard_write_vs_tar", "feature_read_vs_memory"]
SLOW_KEYS = ["paper_chain_wall_s_finetune", "paper_chain_wall_s_dns", "paper_peak_rss_mb_dns",
             "paper_chain_cpu_s_dns_extrapolated_full", "paper_chain_dns_vs_finetune",
             "snakemake_dryrun_s"]


def run_all(out: Path, *extra: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    p = subprocess.run([sys.executable, str(RUN_ALL), "--quick", "--out-dir", str(out), *extra],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return json.loads((out / "summary.json").read_text())


def check(out: Path, summary: dict, keys: list[str], benchmarks: list[str]) -> None:
    missing = [k for k in keys if k not in summary]
    assert not missing, f"summary.json lacks {missing}"
    bad = {k: v for k, v in summary.items() if not isinstance(v, float) or not math.isfinite(v)}
    assert not bad, f"non-finite figures: {bad}"
    assert all(summary[k] > 0 for k in keys)
    table = (out / "SUMMARY.md").read_text()
    assert "| `dns_step_overhead` |" in table and "| `train_throughput_vs_bare` |" in table
    for name in benchmarks:  # every figure carries the device it was measured on
        res = json.loads((out / f"{name}.json").read_text())
        assert res["env"]["device"] == "cpu" and res["env"]["device_name"]
        for fig in res.get("figures", {}).values():
            assert fig["device"] == "cpu" and fig["device_name"] == res["env"]["device_name"]


def test_quick_core_benchmarks(tmp_path):
    summary = run_all(tmp_path, "--only", "subspace", "train", "io")
    check(tmp_path, summary, CORE_KEYS, ["subspace", "train", "io"])
    assert (tmp_path / "subspace_scaling.png").stat().st_size > 0


@pytest.mark.slow
def test_quick_full_suite(tmp_path):
    summary = run_all(tmp_path)
    check(tmp_path, summary, CORE_KEYS + SLOW_KEYS,
          ["subspace", "train", "paper_scale", "io", "orchestration"])
    orch = json.loads((tmp_path / "orchestration.json").read_text())
    assert orch["snakemake"]["jobs"]["train"] == 11 * 2 * 2  # the quick matrix validated
