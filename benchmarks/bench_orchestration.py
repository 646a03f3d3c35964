"""Orchestration overhead: `snakemake -n` on a large experiment matrix, no-op `dvc repro`.

(a) `snakemake -n --configfile matrix.yaml` in a temp copy of the workflow (as
    tests/workflow/test_workflow.py makes it: Snakefile, dvc.yaml, pipeline/, src/,
    params.yaml), with an override of 11 tasks (the digits corpus's 4 tasks repeated under new
    names) x 10 methods x 10 seeds: 1,100 train + 1,200 evaluate jobs, ~2,450 in all. The dry
    run must succeed and plan exactly that many train jobs. Anchor: `snakemake -n` of the
    default params.yaml (2 methods x 3 seeds x 4 steps) in the same copy, and `snakemake
    --version` (interpreter start-up).
(b) No-op `dvc repro` of the full pipeline (both dvc.yaml stages) in a temp copy: `dvc init
    --no-scm`, one real `dvc repro` on a tiny params file (1 task, 1 method, 1 seed), then the
    second `dvc repro` is timed (it must report nothing changed). Anchor: `dvc version`.
    Skipped with --quick (the first, real repro takes a minute or more on 2 cores).

Times are wall clock (external processes) and medians over --repeats. Nothing under the
project is modified: everything runs in temp copies.

    python benchmarks/bench_orchestration.py --out benchmarks/results/orchestration.json
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from benchlib import add_common_args, figure, median, save_result, setup

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
METHODS = ["finetune", "dns", "gpm", "adam_nscl", "ewc", "lwf", "er", "der", "derpp", "agem"]
TARGETS = {"snakemake_dryrun_s": ("<=", 10.0), "dvc_noop_repro_s": ("<=", 5.0)}


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd: list[str], cwd: Path, timeout: float = 1800) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds incl. the command's children, stdout+stderr); raises with
    the output tail on failure."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg", "TQDM_DISABLE": "1"}
    t, c = time.perf_counter(), child_cpu()
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    secs = time.perf_counter() - t
    cpu = child_cpu() - c
    out = p.stdout + p.stderr
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}) in {cwd}:\n{out[-4000:]}")
    return secs, cpu, out


def copy_workflow(dest: Path, params: dict | None = None) -> Path:
    dest.mkdir(parents=True)
    for name in ("Snakefile", "dvc.yaml", ".dvcignore", ".gitignore", "params.yaml"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, dest / name)
    shutil.copytree(ROOT / "pipeline", dest / "pipeline")
    shutil.copytree(ROOT / "src", dest / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    if params is not None:
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


def matrix_override(n_tasks: int, methods: list[str], seeds: int) -> dict:
    """An override (merged over params.yaml): n_tasks tasks cycling through the digits tasks."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    base = list(p["tasks"])
    tasks = {f"s{i + 1:02d}_{base[i % len(base)]}": p["tasks"][base[i % len(base)]]
             for i in range(n_tasks)}
    # same sequence name as params.yaml: Snakemake merges --configfile over it, so this replaces it
    return {"tasks": tasks, "sequences": {"digits": list(tasks)},
            "train": {**p["train"], "methods": methods, "seeds": list(range(1, seeds + 1))}}


def job_counts(dry_run_output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: {rule: count}."""
    table = dry_run_output.split("Job stats:", 1)[-1]
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, flags=re.M)}


def tiny_params() -> dict:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["sequences"] = {"digits": p["sequences"]["digits"][:1]}
    p["tasks"] = {k: v for k, v in p["tasks"].items() if k in p["sequences"]["digits"]}
    p["shard"]["max_per_class"] = 4
    p["train"] |= {"methods": ["finetune"], "seeds": [1], "epochs": 1}
    p["eval"] |= {"n_subsets": 1, "subset_size": 20}
    return p


def part_a(tmp: Path, n_tasks: int, methods: list[str], seeds: int, repeats: int,
           quick: bool) -> dict:
    proj = copy_workflow(tmp / "snakemake")
    override = tmp / "matrix.yaml"
    override.write_text(yaml.safe_dump(matrix_override(n_tasks, methods, seeds),
                                       sort_keys=False))
    sm = str(BIN / "snakemake")
    cases = {"matrix": [sm, "-n", "--configfile", str(override)],
             "default_params": [sm, "-n"],
             "version": [sm, "--version"]}
    if quick:  # the smoke test: one untimed-warm-up-free run of the matrix only
        cases = {"matrix": cases["matrix"]}
    times: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    outputs = {}
    for r in range(0 if quick else -1, repeats):  # round -1 warms the page cache and .pyc
        for k, cmd in cases.items():
            secs, secs_cpu, outputs[k] = run(cmd, proj)
            if r >= 0:
                times[k].append(secs)
                cpu[k].append(secs_cpu)
    counts = job_counts(outputs["matrix"])
    expect_train = n_tasks * len(methods) * seeds
    if counts.get("train") != expect_train:
        raise RuntimeError(f"dry run planned {counts.get('train')} train jobs, expected "
                           f"{expect_train}:\n{outputs['matrix'][-3000:]}")
    out = {"tasks": n_tasks, "methods": methods, "seeds": seeds, "jobs": counts,
           "matrix_s": median(times["matrix"]), "matrix_cpu_s": median(cpu["matrix"]),
           "seconds": times, "cpu_seconds": cpu}
    if not quick:
        out |= {"default_params_s": median(times["default_params"]),
                "default_params_jobs": job_counts(outputs["default_params"]).get("total"),
                "version_s": median(times["version"])}
    return out


def part_b(tmp: Path, repeats: int) -> dict:
    proj = copy_workflow(tmp / "dvc", tiny_params())
    dvc = str(BIN / "dvc")
    run([dvc, "init", "--no-scm", "-q"], proj)
    first, _, _ = run([dvc, "repro"], proj)
    print(f"  first dvc repro (tiny params, real run): {first:.0f} s", flush=True)
    noop, noop_cpu, version = [], [], []
    for _ in range(repeats):
        secs, secs_cpu, out = run([dvc, "repro"], proj)
        if "Running stage" in out or "up to date" not in out:
            raise RuntimeError(f"second dvc repro was not a no-op:\n{out[-3000:]}")
        noop.append(secs)
        noop_cpu.append(secs_cpu)
        version.append(run([dvc, "version"], proj)[0])
    return {"first_repro_s": first, "noop_s": median(noop), "noop_runs_s": noop,
            "noop_cpu_s": median(noop_cpu),
            "version_s": median(version), "version_runs_s": version,
            "params": "1 task, 1 method, 1 seed, max_per_class 4 (tiny; the no-op is timed)",
            "noop_output": out.strip().splitlines()[-3:]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, "benchmarks/results/orchestration.json")
    ap.add_argument("--tasks", type=int, default=11)
    ap.add_argument("--methods", type=int, default=None, help="default 10 (quick 2)")
    ap.add_argument("--seeds", type=int, default=None, help="default 10 (quick 2)")
    ap.add_argument("--repeats", type=int, default=None, help="default 3 (quick 1)")
    ap.add_argument("--dvc", action=argparse.BooleanOptionalAction, default=None,
                    help="run part (b) (default: yes, no with --quick)")
    args = ap.parse_args(argv)
    _, env = setup(ap, args)  # orchestration runs on the host; --device is recorded only
    n_methods = args.methods or (2 if args.quick else 10)
    seeds = args.seeds or (2 if args.quick else 10)
    repeats = args.repeats or (1 if args.quick else 3)
    do_dvc = (not args.quick) if args.dvc is None else args.dvc
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cmcl-bench-orch-") as tmp:
        a = part_a(Path(tmp), args.tasks, METHODS[:n_methods], seeds, repeats, args.quick)
        print(f"(a) snakemake -n, {a['jobs'].get('total')} jobs: {a['matrix_s']:.1f} s "
              f"(default params {a.get('default_params_s', float('nan')):.1f} s, --version "
              f"{a.get('version_s', float('nan')):.1f} s)", flush=True)
        b = part_b(Path(tmp), repeats) if do_dvc else None
        if b:
            print(f"(b) no-op dvc repro: {b['noop_s']:.2f} s (dvc version {b['version_s']:.2f} "
                  "s)", flush=True)
    label = f"{args.tasks} steps x {n_methods} methods x {seeds} seeds"
    figures = {
        "snakemake_dryrun_s": figure(
            a["matrix_s"], "s", env, TARGETS["snakemake_dryrun_s"],
            f"snakemake -n, {label} = {a['jobs'].get('total')} jobs, wall clock (CPU time: "
            f"{a['matrix_cpu_s']:.1f} s)"),
        "snakemake_dryrun_cpu_s": figure(a["matrix_cpu_s"], "s", env, None,
                                         "CPU time of the same dry run (user + system)"),
    }
    if "version_s" in a:
        figures["snakemake_dryrun_vs_default"] = figure(
            a["matrix_s"] / a["default_params_s"], "x", env, None,
            f"anchor: snakemake -n of params.yaml ({a['default_params_jobs']} jobs)")
        figures["snakemake_startup_s"] = figure(a["version_s"], "s", env, None,
                                                "snakemake --version")
    if b:
        figures["dvc_noop_repro_s"] = figure(
            b["noop_s"], "s", env, TARGETS["dvc_noop_repro_s"],
            f"second dvc repro of both stages (tiny params), wall clock (CPU time: "
            f"{b['noop_cpu_s']:.2f} s)")
        figures["dvc_noop_vs_dvc_version"] = figure(b["noop_s"] / b["version_s"], "x", env,
                                                    None, "anchor: dvc version")
    env["loadavg_end"] = os.getloadavg()
    out = {"benchmark": "orchestration", "env": env, "figures": figures, "snakemake": a,
           "dvc": b, "config": {"tasks": args.tasks, "methods": METHODS[:n_methods],
                                "seeds": seeds, "repeats": repeats, "dvc": do_dvc}}
    return save_result(out, args.out, t0)


if __name__ == "__main__":
    main(sys.argv[1:])
