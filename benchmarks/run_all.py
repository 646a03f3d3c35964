"""Run every benchmark, then write summary.json (flat) and SUMMARY.md (figure, value, target).

    python benchmarks/run_all.py                      # full suite on CPU (~10 min on 2 cores)
    python benchmarks/run_all.py --device cuda        # on a GPU (wall clock)
    python benchmarks/run_all.py --quick --out-dir /tmp/bench   # smoke test (~1 min)
    python benchmarks/run_all.py --only reproduce     # opt-in: cold `make reproduce` in a
                                                      # fresh clone, no-op, floor (~15 min)
    python benchmarks/run_all.py --only train io      # rerun some; the summary is rebuilt
                                                      # from every <name>.json in --out-dir

Each benchmark runs in its own process (fresh memory high-water mark, its own thread setting)
and writes <out-dir>/<name>.json, every figure carrying its device name. Every ratio is against
an anchor measured in the same run (back to back where it can be). On CPU the default is one
intra-op thread and the process-CPU-time clock (`--threads 1 --clock cpu`): on a machine shared
with other jobs, wall-clock medians there moved by 2x between runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BENCHMARKS = ["subspace", "train", "paper_scale", "io", "orchestration"]
# run only when named (--only reproduce tar): a cold `make reproduce` in a fresh clone (~10 min);
# the tar backends (CPU and disk only: no device, threads or quick mode either)
OPT_IN = ["reproduce", "tar"]
SCRIPTS = {name: HERE / f"bench_{name}.py" for name in BENCHMARKS + OPT_IN}
SUBSPACE_QUICK = ["--steps", "3", "--warmup", "1", "--rounds", "1", "--profile-reps", "1",
                  "--dims", "256", "--samples", "2048", "--scaling-repeats", "1",
                  "--fractions", "0.05", "0.5", "--sweep-rounds", "1"]
SUBSPACE_METHODS = {  # summary key: bench_subspace variant
    "dns_step_overhead": "dns_exact",
    "dns_faithful_step_overhead": "dns_faithful",
    "gpm_step_overhead": "gpm_gradient",
    "gpm_update_step_overhead": "gpm_update",
    "adam_nscl_step_overhead": "adam_nscl",
    "dns_rotated_step_overhead": "dns_rotated",
    "gpm_rotated_step_overhead": "gpm_rotated",
    "adam_nscl_rotated_step_overhead": "adam_nscl_rotated",
}
# k-sweep (bench_subspace part c): the ratio at the smallest protected rank tested (the regime
# the paper's absolute thresholds give) and where each placement stops meeting the target
SWEEP_SUMMARY = {"dns_exact": "dns", "dns_faithful": "dns_faithful", "gpm_gradient": "gpm",
                 "gpm_update": "gpm_update", "adam_nscl": "adam_nscl",
                 "dns_rotated": "dns_rotated", "gpm_rotated": "gpm_rotated",
                 "adam_nscl_rotated": "adam_nscl_rotated"}
STEP_TARGET = ("<=", 1.10)
REQUIRED = ["dns_step_overhead", "train_throughput_vs_bare"]


def bench_argv(name: str, args: argparse.Namespace, out: Path) -> list[str]:
    if name in OPT_IN:  # measures processes on the CPU: no device, threads or quick mode
        return ["--out", str(out)]
    argv = ["--device", args.device, "--out", str(out)]
    if name in ("subspace", "train", "io"):  # paper_scale reports wall and CPU time both
        argv += ["--clock", args.clock]
    if name != "orchestration" and args.threads:
        argv += ["--threads", str(args.threads)]
    if args.quick:
        argv += SUBSPACE_QUICK if name == "subspace" else ["--quick"]
    return argv


def run_benchmark(name: str, args: argparse.Namespace) -> dict:
    out = args.out_dir / f"{name}.json"
    cmd = [sys.executable, str(SCRIPTS[name]), *bench_argv(name, args, out)]
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    env = {**os.environ, "TQDM_DISABLE": "1", "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, stdout=None, stderr=subprocess.PIPE, text=True)
    secs = time.perf_counter() - t
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-5000:])
        print(f"== {name}: FAILED ({p.returncode}) after {secs:.0f} s", flush=True)
    else:
        print(f"== {name}: {secs:.0f} s", flush=True)
    return {"seconds": round(secs, 1), "argv": cmd[1:], "returncode": p.returncode,
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def subspace_figures(res: dict) -> dict:
    """bench_subspace's JSON in the common figure format (it predates `figures`)."""
    env, step = res["env"], res["step_time"]
    base = {"device": env["device"], "device_name": env["device_name"]}
    figs = {}
    ranks = res["config"]["past_ranks"]
    for key, variant in SUBSPACE_METHODS.items():
        if variant in step:
            v = step[variant]["ratio_median_vs_finetune"]
            note = (f"median ms/step of {variant} / finetune at d={res['config']['d']}, batch "
                    f"{res['config']['batch']}, protected ranks (in, out) "
                    f"{[(r['in'], r['out']) for r in ranks.values()]}")
            sv = step[variant]
            if "per_task_inputs_ms" in sv:
                note += (f"; inputs rotated once per task ({sv['per_task_inputs_ms']:.0f} ms for "
                         f"{sv['task_rows']} rows), with it spread over 5 epochs: "
                         f"{sv['ratio_median_incl_inputs_vs_finetune']:.2f}x")
            figs[key] = {"value": v, "unit": "x", **base,
                         "target": f"{STEP_TARGET[0]} {STEP_TARGET[1]:g}",
                         "met": bool(v <= STEP_TARGET[1]), "note": note}
    sweep = res.get("rank_sweep") or {}
    if sweep:
        rows = sorted(sweep["rows"], key=lambda r: r["k_frac"])
        low = rows[0]
        for variant, name in SWEEP_SUMMARY.items():
            if variant not in low["ratio_median"]:
                continue
            v = low["ratio_median"][variant]
            curve = ", ".join(f"{r['k_frac']:g}: {r['ratio_median'][variant]:.2f}" for r in rows)
            figs[f"{name}_step_overhead_kfrac_{low['k_frac']:g}"] = {
                "value": v, "unit": "x", **base,
                "target": f"{STEP_TARGET[0]} {STEP_TARGET[1]:g}", "met": bool(v <= STEP_TARGET[1]),
                "note": f"{variant} at protected rank k = {low['k']} of d = {sweep['d']} (k_in = "
                        f"k_out); ratio by k/d: {curve}; plot: {res.get('rank_sweep_plot')}"}
            m = sweep["meets_target"][variant]
            figs[f"{name}_max_kfrac_within_target"] = {
                "value": m["max_k_frac_all_meet"] or 0.0, "unit": "k/d", **base,
                "note": f"largest tested k/d up to which {variant} meets <= {STEP_TARGET[1]:g}x "
                        f"(0: none); tested k/d meeting it: {m['meets_at_k_frac']}; line "
                        f"{m['fit_intercept']:.2f} + {m['fit_slope']:.2f}·min(k, d-k)/d crosses "
                        f"the target at k/d {m['fit_k_frac_at_target']}"}
    for variant in ("finetune", "dns_exact"):
        if variant in step:
            figs[f"{variant}_step_ms_d{res['config']['d']}"] = {
                "value": step[variant]["median_ms"], "unit": "ms", **base}
    rows = res.get("scaling") or []
    if rows:
        big = max(rows, key=lambda r: (r["d"], r["n"]))
        figs[f"subspace_update_s_d{big['d']}_n{big['n']}"] = {
            "value": big["total_s"], "unit": "s", **base,
            "note": f"covariance update + eigh per task; curve: {res.get('scaling_plot')}"}
    return figs


def collect(out_dir: Path) -> dict[str, dict]:
    figures: dict[str, dict] = {}
    for name in BENCHMARKS + OPT_IN:
        path = out_dir / f"{name}.json"
        if not path.exists():
            continue
        res = json.loads(path.read_text())
        figs = subspace_figures(res) if name == "subspace" else res.get("figures", {})
        for k, v in figs.items():
            figures[k] = {**v, "benchmark": name}
    return figures


def fmt(v: float) -> str:
    if v == 0 or 0.01 <= abs(v) < 1e5:
        return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return f"{v:.3g}"


def write_summary(out_dir: Path, figures: dict[str, dict], meta: dict) -> dict:
    from cmcl.io import atomic_path, write_json

    flat = {k: float(v["value"]) for k, v in figures.items()
            if isinstance(v.get("value"), int | float) and math.isfinite(v["value"])}
    write_json(out_dir / "summary.json", flat)
    done = meta.get("benchmarks", {})
    runs = "; ".join(f"{k} {done[k].get('date', '?')}, {done[k]['seconds']:.0f} s"
                     for k in BENCHMARKS + OPT_IN if k in done)
    lines = ["# Benchmark summary", "",
             f"Made by `python benchmarks/run_all.py` ({runs}; total "
             f"{sum(v['seconds'] for v in meta.get('benchmarks', {}).values()):.0f} s). Each "
             "ratio is against an anchor measured in the same run; per-benchmark details "
             "(rounds, spreads, configuration, load average) are in `<benchmark>.json`.", "",
             "| figure | value | unit | target | met? | device | benchmark |",
             "|---|---|---|---|---|---|---|"]
    ordered = sorted(figures, key=lambda k: "target" not in figures[k])  # targets first
    for k in ordered:
        v = figures[k]
        if k not in flat:
            continue
        met = {True: "yes", False: "**no**", None: ""}[v.get("met")]
        lines.append(f"| `{k}` | {fmt(flat[k])} | {v.get('unit', '')} | {v.get('target', '')} "
                     f"| {met} | {v['device_name']} ({v['device']}) | {v['benchmark']} |")
    notes = [f"- `{k}`: {v['note']}" for k, v in figures.items() if v.get("note") and k in flat]
    lines += ["", "Notes:", "", *notes, ""]
    with atomic_path(out_dir / "SUMMARY.md") as tmp:
        tmp.write_text("\n".join(lines))
    return flat


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--out-dir", type=Path, default=HERE / "results")
    ap.add_argument("--only", nargs="+", choices=BENCHMARKS + OPT_IN, default=None)
    ap.add_argument("--skip", nargs="+", choices=BENCHMARKS, default=[])
    ap.add_argument("--clock", choices=["wall", "cpu"], default=None,
                    help="default: cpu on a CPU device, wall on an accelerator")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: 1 on CPU, library default otherwise)")
    ap.add_argument("--summary-only", action="store_true",
                    help="rebuild summary.json / SUMMARY.md from the JSONs in --out-dir")
    args = ap.parse_args(argv)
    on_cpu = args.device == "cpu"
    args.clock = args.clock or ("cpu" if on_cpu else "wall")
    args.threads = args.threads if args.threads is not None else (1 if on_cpu else None)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runs = {}
    if not args.summary_only:
        for name in args.only or BENCHMARKS:
            if name not in args.skip:
                runs[name] = run_benchmark(name, args)
    total = time.perf_counter() - t0
    from cmcl.io import write_json

    log = args.out_dir / "run_all.json"  # partial reruns (--only) update their entries
    meta = json.loads(log.read_text()) if log.exists() else {}
    if meta.get("quick", args.quick) != args.quick:
        meta = {}
    meta |= {"device": args.device, "clock": args.clock, "threads": args.threads,
             "quick": args.quick, "benchmarks": {**meta.get("benchmarks", {}), **runs}}
    if runs:
        meta["last_command"] = "python benchmarks/run_all.py " + " ".join(
            sys.argv[1:] if argv is None else argv)
        meta["last_seconds"] = round(total, 1)
        meta["loadavg_end"] = os.getloadavg()
        write_json(log, meta)
    figures = collect(args.out_dir)
    flat = write_summary(args.out_dir, figures, meta)
    missing = [k for k in REQUIRED if k not in flat]
    failed = [k for k, r in runs.items() if r["returncode"]]
    print((args.out_dir / "SUMMARY.md").read_text())
    if failed or missing:
        raise SystemExit(f"failed benchmarks: {failed}; summary lacks: {missing}")
    print(f"wrote {args.out_dir}/summary.json and SUMMARY.md; total {total:.0f} s")
    return flat


if __name__ == "__main__":
    main()
