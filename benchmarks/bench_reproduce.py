"""`make reproduce` from a fresh clone: cold and no-op wall time, jobs, CPU per job kind, floor.

(a) Cold: `git clone <repo>` into a temp dir and `make reproduce` there (venv install included,
    the full default matrix, the report and the `check` rule). Wall time, CPU seconds of every
    child process (install + Snakemake + jobs), and the install's share (until .venv/.installed).
    The cmcl catalog and matplotlib caches point into the temp dir, as on a first run.
(b) No-op: `make reproduce` again in the same clone (it must run no job).
(c) Jobs per rule: the Snakemake log of (a).
(d) CPU seconds per job kind: the `cpu_time` of every job of the rules that declare `benchmark:`
    (mean over the run's jobs), and for every rule one job rerun by hand from its shell command
    (what `snakemake -n -p -F` prints) beside an *empty* job of the same verb: the interpreter
    importing what the verb imports, doing no work. Process CPU time (user + sys of the child),
    which other processes on a shared machine do not inflate.
(e) Floor: the same matrix, every job's `python -m cmcl` command from (d)'s listing, run in
    dependency order in ONE process through `cmcl.cli.main` (no Snakemake, no per-job start):
    the anchor. Its metrics.json must equal the cold run's (bit-identical results).

Figures: cold wall ≤ 8 min and no-op ≤ 10 s (targets), and `make reproduce` ÷ floor (wall and
CPU). Nothing under the repository is modified; everything runs in temp dirs.

    python benchmarks/bench_reproduce.py --out benchmarks/results/reproduce.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"reproduce_cold_s": 8 * 60.0, "reproduce_noop_s": 10.0}
# what each verb imports before it works: an empty job of that verb imports just these
VERB_MODULES = {"corpus": "cmcl.corpora.builtin", "shard": "cmcl.shards", "embed": "cmcl.embed",
                "import-features": "cmcl.corpora.features_h5", "init": "cmcl.train",
                "train": "cmcl.train", "evaluate": "cmcl.evaluate", "report": "cmcl.report",
                "check": "cmcl.check", "resources": "cmcl.resources"}


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd: list[str] | str, cwd: Path, env: dict, timeout: float = 3600,
        check: bool = True) -> tuple[float, float, str]:
    """(wall s, CPU s of the command and its children, output); raises with the tail on failure."""
    t, c = time.perf_counter(), child_cpu()
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                       shell=isinstance(cmd, str), executable="/bin/bash" if isinstance(
                           cmd, str) else None)
    wall, cpu = time.perf_counter() - t, child_cpu() - c
    out = p.stdout + p.stderr
    if check and p.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({p.returncode}) in {cwd}:\n{out[-4000:]}")
    return wall, cpu, out


def job_counts(log: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake log: {rule: count}."""
    table = log.split("Job stats:", 1)[-1].split("\n\n", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, flags=re.M)}


def dry_run_jobs(text: str) -> list[dict]:
    """Jobs of `snakemake -n -p -F`: rule, inputs, outputs, shell command."""
    jobs = []
    for block in re.split(r"\n\[[^\]]+\]\n", text):
        m = re.search(r"^(?:local)?rule (\w+):", block, flags=re.M)
        cmd = re.search(r"^Shell command: (.*)$", block, flags=re.M)
        if not m or not cmd:
            continue
        field = {k: re.search(rf"^    {k}: (.*)$", block, flags=re.M) for k in ("input", "output")}
        jobs.append({"rule": m[1], "shell": cmd[1],
                     **{k: v[1].split(", ") if v else [] for k, v in field.items()}})
    return jobs


def topo_order(jobs: list[dict]) -> list[dict]:
    """Jobs in an order where every input (a path, or inside a folder) was made before."""
    made = {o: i for i, j in enumerate(jobs) for o in j["output"]}

    def producers(j: dict) -> set[int]:
        deps = set()
        for p in j["input"]:
            deps |= {i for o, i in made.items() if p == o or p.startswith(o + "/")}
        return deps

    deps = [producers(j) for j in jobs]
    order, done = [], set()
    while len(order) < len(jobs):
        ready = [i for i in range(len(jobs)) if i not in done and deps[i] <= done]
        if not ready:
            raise RuntimeError("dependency cycle in the dry-run listing")
        order += ready
        done |= set(ready)
    return [jobs[i] for i in order]


def cmcl_argv(shell: str) -> list[str] | None:
    """The `-m cmcl VERB ARGS` of a job's shell command -> [VERB, ARGS...] (None: not cmcl).

    Handles `[ENV=..] python -m cmcl ...` and launcher prefixes such as the embed rule's
    `$RUN -m cmcl ...`; the `> log 2>&1` redirection is dropped."""
    at = shell.find("-m cmcl ")
    if at < 0:
        return None
    return shlex.split(shell[at + len("-m cmcl "):].split(" > ", 1)[0])


FLOOR = """
import io, json, os, sys, time, contextlib
os.environ["OMP_NUM_THREADS"] = "1"  # what every rule's job runs with
import torch
torch.set_num_threads(1)
from cmcl.cli import main
jobs = json.load(open(sys.argv[1]))
t, c = time.perf_counter(), time.process_time()
for argv in jobs:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(argv)
    if rc:
        raise SystemExit(f"floor: {argv} failed:\\n{err.getvalue()[-3000:]}")
print(json.dumps({"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c}))
"""


def floor(clone: Path, jobs: list[dict], work: Path, env: dict) -> dict:
    """Every job's cmcl command in one process (the clone's venv), in a fresh folder."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    for name in ("params.yaml", "Snakefile"):
        shutil.copy(clone / name, work / name)
    shutil.copytree(clone / "pipeline", work / "pipeline")
    argvs = [a for a in (cmcl_argv(j["shell"]) for j in topo_order(jobs)) if a]
    (work / "jobs.json").write_text(json.dumps(argvs))
    (work / "floor.py").write_text(FLOOR)
    wall, cpu, out = run([str(clone / ".venv/bin/python"), "floor.py", "jobs.json"], work, env)
    inner = json.loads(out.strip().splitlines()[-1])
    same = (work / "reports/metrics.json").read_bytes() == \
        (clone / "reports/metrics.json").read_bytes()
    return {"jobs": len(argvs), "process_wall_s": round(wall, 2), "process_cpu_s": round(cpu, 2),
            "work_wall_s": round(inner["wall_s"], 2), "work_cpu_s": round(inner["cpu_s"], 2),
            "metrics_equal_to_cold_run": same}


def per_job_cpu(clone: Path, work: Path, jobs: list[dict], env: dict) -> dict:
    """Per rule: one real job rerun by hand and an empty job of its verb, CPU s (children)."""
    py = str(clone / ".venv/bin/python")
    out: dict[str, dict] = {}
    for rule in dict.fromkeys(j["rule"] for j in jobs):
        mine = [j for j in jobs if j["rule"] == rule]
        pick = mine[min(len(mine) - 1, len(mine) // 2)]  # a job from the middle of the chain
        argv = cmcl_argv(pick["shell"])
        if argv is None:
            continue
        row: dict = {"jobs_in_matrix": len(mine), "job": ", ".join(pick["output"])[:200]}
        for o in map(work.joinpath, pick["output"]):  # as Snakemake does before a job
            if o.is_dir():
                shutil.rmtree(o)
            elif o.exists():
                o.unlink()
        shell = re.sub(r" > \S+ 2>&1\s*$", " > /dev/null 2>&1", pick["shell"])
        _, row["real_cpu_s"], _ = run(shell, work, env)
        mod = VERB_MODULES.get(argv[0], "cmcl.cli")
        cpus = [run([py, "-c", f"import cmcl.cli, {mod}"], work, env)[1] for _ in range(3)]
        row["empty_cpu_s"] = round(sorted(cpus)[1], 3)
        row["real_cpu_s"] = round(row["real_cpu_s"], 3)
        out[rule] = row
    return out


def benchmark_tsv(clone: Path) -> dict[str, dict]:
    """Mean/min/max cpu_time of every job of the rules with a `benchmark:` file, cold run."""
    rows: dict[str, list[float]] = {}
    for f in (clone / "results/benchmarks").rglob("*.tsv"):
        rule = f.relative_to(clone / "results/benchmarks").parts[0]
        lines = f.read_text().splitlines()
        head, vals = lines[0].split("\t"), lines[1].split("\t")
        rows.setdefault(rule, []).append(float(vals[head.index("cpu_time")]))
    return {r: {"jobs": len(v), "mean_cpu_s": round(sum(v) / len(v), 3),
                "min_cpu_s": round(min(v), 3), "max_cpu_s": round(max(v), 3),
                "sum_cpu_s": round(sum(v), 1)} for r, v in sorted(rows.items())}


def cold_run(repo: Path, tmp: Path, make: list[str], env: dict) -> dict:
    """Clone and `make reproduce` once; the figures are kept in <tmp>/cold.json (--resume)."""
    clone = tmp / "clone"
    load0 = os.getloadavg()
    commit = run(["git", "rev-parse", "HEAD"], repo, env)[2].strip()
    run(["git", "clone", "-q", str(repo), str(clone)], tmp, env)
    print(f"cold: {' '.join(make)} in {clone} (commit {commit[:10]})", flush=True)
    start = time.time()
    wall, cpu, _ = run(make, clone, env)
    logs = sorted((clone / ".snakemake/log").glob("*.snakemake.log"))
    check = json.loads((clone / "reports/check.json").read_text())
    cold = {"commit": commit, "wall_s": wall, "cpu_s": cpu, "loadavg_start": load0,
            "install_wall_s": (clone / ".venv/.installed").stat().st_mtime - start,
            "jobs": job_counts(logs[-1].read_text()), "loadavg_after": os.getloadavg()}
    (tmp / "cold.json").write_text(json.dumps(cold, indent=1))
    print(f"  {wall:.0f} s wall, {cpu:.0f} s CPU, {cold['jobs'].get('total')} jobs, "
          f"check ok: {check.get('ok')}", flush=True)
    return cold


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=ROOT, help="the git repository to clone")
    ap.add_argument("--cores", default=None, help="make reproduce CORES= (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/reproduce.json")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (its path is printed)")
    ap.add_argument("--resume", type=Path, help="a kept temp dir: reuse its cold run (cold.json)")
    args = ap.parse_args(argv)
    tmp = args.resume or Path(tempfile.mkdtemp(prefix="cmcl-reproduce-"))
    clone = tmp / "clone"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                  if not p.startswith(str(Path(sys.executable).parent)))
    env |= {"CMCL_CACHE_DIR": str(tmp / "cache/cmcl"), "MPLCONFIGDIR": str(tmp / "cache/mpl"),
            "TQDM_DISABLE": "1"}
    make = ["make", "reproduce"] + ([f"CORES={args.cores}"] if args.cores else [])
    if args.resume:
        cold = json.loads((tmp / "cold.json").read_text())
    else:
        cold = cold_run(args.repo, tmp, make, env)
    commit, cold_wall, cold_cpu, install_s = (cold["commit"], cold["wall_s"], cold["cpu_s"],
                                              cold["install_wall_s"])
    counts, load0, load1 = cold["jobs"], cold["loadavg_start"], cold["loadavg_after"]
    check = json.loads((clone / "reports/check.json").read_text())
    noop = [run(make, clone, env)[0] for _ in range(3)]
    noop_out = run(["snakemake", "-n"], clone, {**env, "PATH": f"{clone}/.venv/bin:"
                                                        f"{env['PATH']}"})[2]
    if "Nothing to be done" not in noop_out:
        raise RuntimeError(f"the rerun is not a no-op:\n{noop_out[-3000:]}")
    print(f"no-op: {sorted(noop)[1]:.1f} s", flush=True)
    venv_env = {**env, "PATH": f"{clone}/.venv/bin:{env['PATH']}"}
    listing = run(["snakemake", "-n", "-p", "-F"], clone, venv_env)[2]
    jobs = dry_run_jobs(listing)
    fl = floor(clone, jobs, tmp / "floor", venv_env)
    print(f"floor: {fl['process_wall_s']:.0f} s wall, {fl['process_cpu_s']:.0f} s CPU in one "
          f"process, metrics equal: {fl['metrics_equal_to_cold_run']}", flush=True)
    kinds = per_job_cpu(clone, tmp / "floor", jobs, venv_env)
    snake_wall = cold_wall - install_s
    res = {
        "env": {"device": "cpu", "device_name": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(), "python": platform.python_version(),
                "loadavg_start": load0, "loadavg_after_cold": load1,
                "loadavg_end": os.getloadavg(), "commit": commit, "argv": sys.argv[1:],
                "date": time.strftime("%Y-%m-%d %H:%M %Z")},
        "cold": {"wall_s": round(cold_wall, 1), "cpu_s": round(cold_cpu, 1),
                 "install_wall_s": round(install_s, 1), "snakemake_wall_s": round(snake_wall, 1),
                 "jobs": counts, "check_ok": bool(check.get("ok"))},
        "noop_wall_s": [round(s, 2) for s in noop],
        "benchmark_files": benchmark_tsv(clone),
        "per_job_cpu": kinds,
        "floor": fl,
    }
    res["ratios"] = {"make_reproduce_wall_vs_floor": round(cold_wall / fl["process_wall_s"], 2),
                     "snakemake_wall_vs_floor": round(snake_wall / fl["process_wall_s"], 2),
                     "cold_cpu_vs_floor_cpu": round(cold_cpu / fl["process_cpu_s"], 2)}
    base = {"device": "cpu", "device_name": res["env"]["device_name"]}
    figs = {
        "reproduce_cold_s": {"value": cold_wall, "unit": "s", "target": "<= 480", **base,
                             "met": cold_wall <= TARGETS["reproduce_cold_s"] and check.get("ok"),
                             "note": f"`make reproduce` on a fresh clone, {counts.get('total')} "
                                     f"jobs, install {install_s:.0f} s included, check passing: "
                                     f"{check.get('ok')}; load average {load0[0]:.1f} before, "
                                     f"{load1[0]:.1f} after"},
        "reproduce_noop_s": {"value": sorted(noop)[1], "unit": "s", "target": "<= 10", **base,
                             "met": sorted(noop)[1] <= TARGETS["reproduce_noop_s"]},
        "reproduce_vs_floor": {"value": res["ratios"]["make_reproduce_wall_vs_floor"],
                               "unit": "x", **base,
                               "note": f"floor: the same {fl['jobs']} cmcl commands in one "
                                       f"process, {fl['process_wall_s']:.0f} s wall; metrics "
                                       f"equal: {fl['metrics_equal_to_cold_run']}"},
        "reproduce_jobs": {"value": float(counts.get("total", 0)), "unit": "jobs", **base},
    }
    res["figures"] = {k: {**v, "value": round(float(v["value"]), 2)} for k, v in figs.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v["value"] for k, v in res["figures"].items()}, indent=1))
    print(json.dumps(kinds, indent=1))
    if args.keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


if __name__ == "__main__":
    main()
