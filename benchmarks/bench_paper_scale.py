"""Paper-scale protocol: 11 tasks, ~10k train / 2k test pairs each, d = 1024, whole chain.

Synthetic features are written directly as feature shards in the embed stage's output format
(one folder per task and split: tar + sizes.json + meta.json, and classes.safetensors prompts
for tasks with text), for 4 modalities (text, image, audio, depth) that recur across the 11
tasks. Features are per-modality fixed mixings of a shared, class-structured latent with a
decaying spectrum (so subspace methods see a real null space), the same latent for both sides
of a pair (so the contrastive task is learnable).

For each method (finetune, dns by default) a fresh child process runs the whole chain through
the library, in process: `init_step`, then for t = 1..11 `train_step` (reads the task's feature
shards, trains, saves checkpoint + method state) and after every step, including step 0,
`evaluate_step` on every task's test split. Reported: chain wall time (and CPU time), split into
training and evaluation, and the child's peak resident memory (VmHWM; see maxrss_mb) with its
baseline after imports. The anchor is finetune: DNS's chain time is also given as a ratio.

`--scale s1 s2 ...` multiplies the pair counts (default 0.05 and 0.1: ~5 min on 2 cores); the
largest scale gives the measured figures, and full-size chain times are *extrapolated* along the
least-squares line through all scales (so fixed costs are not multiplied up), labelled
`extrapolated_full`. Peak memory is not extrapolated (at these sizes it is dominated by fixed
costs and allocator noise): `--memory-probe` (default on) measures it directly at full size on
the first 4 tasks (all 4 modalities) with 1 epoch, every step evaluated on those tasks; one
task's features are in memory at a time, so the peak does not grow with the number of tasks.

    python benchmarks/bench_paper_scale.py --device cpu --scale 0.05 0.1 \
        --out benchmarks/results/paper_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_train import write_feature_split
from benchlib import add_common_args, figure, save_result, setup

from cmcl.io import save_tensors, write_json

MODALITIES = ("text", "image", "audio", "depth")
PAIRS = [("text", "image"), ("text", "audio"), ("image", "audio"), ("text", "depth"),
         ("image", "depth"), ("audio", "depth")]
CLASSES = [f"class{i}" for i in range(10)]
TEMPLATES = ["a {}", "a photo of a {}"]
TRAIN_FULL, TEST_FULL = 10_000, 2_000


def task_names(n_tasks: int) -> list[str]:
    return [f"t{i + 1:02d}_{'_'.join(PAIRS[i % len(PAIRS)])}" for i in range(n_tasks)]


def make_data(root: Path, n_tasks: int, n_train: int, n_test: int, d: int,
              seed: int = 0) -> list[dict]:
    """Write every task's train/test feature shards; return the task specs."""
    rng = np.random.default_rng(seed)
    spectrum = torch.arange(1, d + 1, dtype=torch.float32) ** -0.55  # eigenvalues ~ k^-1.1,
    # ~530 of 1024 above 1e-3 of the largest. Linear algebra in torch: it honours --threads
    gen = torch.Generator().manual_seed(seed)
    mix = {m: torch.linalg.qr(torch.randn(d, d, generator=gen))[0] for m in MODALITIES}
    tasks = []
    for t, name in enumerate(task_names(n_tasks)):
        a, b = PAIRS[t % len(PAIRS)]
        centroids = torch.randn(len(CLASSES), d, generator=gen)

        def features(labels, m, eps, centroids=centroids):
            z = (centroids[torch.as_tensor(labels)] + eps) * spectrum
            return (z @ mix[m] + 0.01 * torch.randn(z.shape, generator=gen)).numpy()

        for split, n in (("train", n_train), ("test", n_test)):
            labels = rng.integers(0, len(CLASSES), n)
            eps = torch.randn(n, d, generator=gen)  # shared by both sides of a pair
            feats = {m: features(labels, m, eps) for m in (a, b)}
            out = root / name / split
            write_feature_split(out, feats, labels, name, split,
                                {"classes": CLASSES, "templates": TEMPLATES})
            if "text" in (a, b):
                prompts = np.stack([features(np.full(len(TEMPLATES), c), "text",
                                             0.3 * torch.randn(len(TEMPLATES), d,
                                                               generator=gen))
                                    for c in range(len(CLASSES))])
                save_tensors(out / "classes.safetensors",
                             {"prompts": torch.from_numpy(prompts),
                              "class_ids": torch.arange(len(CLASSES))})
        tasks.append({"name": name, "corpus": "synthetic", "modalities": [a, b],
                      "pairing": "sample", "relevance": "label"})
    return tasks


def chain_cfg(method: str, epochs: int, embed_dim: int, device: str) -> dict:
    """params.yaml's settings, heads d -> embed_dim."""
    return {"model": {"embed_dim": embed_dim, "bias": False, "init": "orthogonal"},
            "loss": {"preset": "default", "temperature": 0.1, "normalize": True,
                     "symmetric": True},
            "train": {"epochs": epochs, "batch_size": 64, "lr": 0.01, "weight_decay": 1e-3,
                      "grad_clip": 1.0, "deterministic": True, "cpu": device == "cpu"},
            "methods": {method: {}},
            "eval": {"ks": [1, 5, 10], "n_subsets": 5, "subset_size": 1000, "seed": 0,
                     "batch_size": 1024}}


def maxrss_mb() -> float:
    """Peak resident memory of this process in MB: VmHWM of /proc/self/status on Linux.

    Not getrusage's ru_maxrss: Linux carries the *parent's* resident size over an exec into the
    child's ru_maxrss, so a child started by a parent holding the generated data would report
    the parent's memory. VmHWM belongs to the process's own address space."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_chain(job: dict) -> dict:
    """The child: one method's whole chain, in process, timed step by step."""
    import pandas as pd
    import pyarrow.parquet  # noqa: F401  (loaded before the memory baseline)

    from cmcl.evaluate import evaluate_step
    from cmcl.train import init_step, make_accelerator, train_step

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    make_accelerator(job["cfg"]["train"])  # process start-up, before the baseline
    data, work = Path(job["data"]), Path(job["work"])
    tasks, method, cfg = job["tasks"], job["method"], job["cfg"]
    train_dirs = [data / t["name"] / "train" for t in tasks]
    test_dirs = [data / t["name"] / "test" for t in tasks]
    base_rss = maxrss_mb()
    steps = []

    def clocked(fn):
        w, c = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - w, time.process_time() - c

    w0, c0 = time.perf_counter(), time.process_time()
    run = work / method
    init = clocked(lambda: init_step(cfg, method, 1, train_dirs, run / "step0"))
    ev = clocked(lambda: evaluate_step(cfg, run / "step0", tasks, test_dirs,
                                       work / "eval" / method / "step0.parquet"))
    steps.append({"step": 0, "train_wall_s": init[0], "train_cpu_s": init[1],
                  "eval_wall_s": ev[0], "eval_cpu_s": ev[1], "rss_mb": maxrss_mb()})
    for t, task in enumerate(tasks, start=1):
        tr = clocked(lambda t=t, task=task: train_step(
            cfg, method, 1, t, task, train_dirs[t - 1], run / f"step{t - 1}", run / f"step{t}"))
        ev = clocked(lambda t=t: evaluate_step(cfg, run / f"step{t}", tasks, test_dirs,
                                               work / "eval" / method / f"step{t}.parquet"))
        steps.append({"step": t, "train_wall_s": tr[0], "train_cpu_s": tr[1],
                      "eval_wall_s": ev[0], "eval_cpu_s": ev[1], "rss_mb": maxrss_mb()})
        print(f"  {method} step {t}: train {tr[0]:.1f} s, eval {ev[0]:.1f} s", flush=True)
    last = pd.read_parquet(work / "eval" / method / f"step{len(tasks)}.parquet")
    final_map = float(last[last.metric == "map"].value.mean())
    return {"method": method, "chain_wall_s": time.perf_counter() - w0,
            "chain_cpu_s": time.process_time() - c0,
            "train_wall_s": sum(s["train_wall_s"] for s in steps),
            "eval_wall_s": sum(s["eval_wall_s"] for s in steps),
            "train_cpu_s": sum(s["train_cpu_s"] for s in steps),
            "eval_cpu_s": sum(s["eval_cpu_s"] for s in steps),
            "baseline_rss_mb": base_rss, "peak_rss_mb": maxrss_mb(),
            "final_avg_map": final_map, "steps": steps}


def run_scale(tmp: Path, scale: float, tasks_n: int, args, device, epochs: int,
              emb: int) -> dict:
    """Generate the data of one scale, run every method's chain in a fresh child process."""
    n_train, n_test = max(64, round(TRAIN_FULL * scale)), max(16, round(TEST_FULL * scale))
    root = tmp / f"scale{scale}"
    tw = time.perf_counter()
    tasks = make_data(root / "features", tasks_n, n_train, n_test, args.dim)
    gen_s = time.perf_counter() - tw
    data_mb = sum(p.stat().st_size for p in (root / "features").rglob("*") if p.is_file()) / 1e6
    print(f"scale {scale}: {tasks_n} tasks x {n_train} train / {n_test} test pairs, {epochs} "
          f"epochs: wrote {data_mb:.0f} MB of feature shards in {gen_s:.1f} s", flush=True)
    out = {"scale": scale, "tasks": tasks_n, "epochs": epochs, "train_pairs": n_train,
           "test_pairs": n_test, "data_mb": data_mb, "data_generation_s": gen_s,
           "task_specs": tasks, "methods": {}}
    for method in args.methods:
        job = {"data": str(root / "features"), "work": str(root / "runs"), "tasks": tasks,
               "method": method, "threads": args.threads,
               "cfg": chain_cfg(method, epochs, emb, device.type),
               "result": str(root / f"{method}.json")}
        jf = root / f"{method}.job.json"
        jf.write_text(json.dumps(job))
        subprocess.run([sys.executable, __file__, "--child", str(jf)], check=True)
        r = out["methods"][method] = json.loads(Path(job["result"]).read_text())
        print(f"  {method}: chain {r['chain_wall_s']:.1f} s (train {r['train_wall_s']:.1f}, "
              f"eval {r['eval_wall_s']:.1f}), peak RSS {r['peak_rss_mb']:.0f} MB (baseline "
              f"{r['baseline_rss_mb']:.0f}), final mAP {r['final_avg_map']:.3f}", flush=True)
    shutil.rmtree(root)
    return out


def extrapolate(points: list[tuple[float, float]]) -> dict:
    """Value at scale 1 from (scale, value) points: the least-squares line through them (with
    a single point, the line through it and the origin)."""
    if len(points) >= 2:
        x, y = np.array(points, dtype=float).T
        slope, icpt = np.polyfit(x, y, 1)
        how = f"least-squares line through scales {sorted(x.tolist())}"
    else:
        (x0, y0), = points
        slope, icpt, how = y0 / x0, 0.0, f"line through scale {x0} and the origin"
    return {"value": float(icpt + slope), "intercept": float(icpt),
            "per_full_scale": float(slope), "how": how}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, "benchmarks/results/paper_scale.json")
    ap.add_argument("--scale", type=float, nargs="+", default=None,
                    help="fraction(s) of the paper's pair counts; the largest is the measured "
                    "figure, all of them feed the linear extrapolation of time (default 0.05 "
                    "0.1; quick 0.01)")
    ap.add_argument("--tasks", type=int, default=11)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--embed-dim", type=int, default=None, help="default: --dim (d -> d heads)")
    ap.add_argument("--epochs", type=int, default=None, help="default 5 (params.yaml); quick 1")
    ap.add_argument("--methods", nargs="+", default=["finetune", "dns"],
                    help="the first one is the anchor")
    ap.add_argument("--memory-probe", action=argparse.BooleanOptionalAction, default=None,
                    help="also run the first 4 tasks (all 4 modalities) at full size for 1 "
                    "epoch to measure peak memory directly (default: yes; no with --quick)")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:  # internal: run one chain described by a JSON job file
        job = json.loads(args.child.read_text())
        write_json(job["result"], run_chain(job))
        return {}
    device, env = setup(ap, args)
    scales = sorted(args.scale or ([0.01] if args.quick else [0.05, 0.1]))
    tasks_n = 3 if args.quick and args.tasks == 11 else args.tasks
    epochs = args.epochs or (1 if args.quick else 5)
    probe = (not args.quick) if args.memory_probe is None else args.memory_probe
    emb = args.embed_dim or args.dim
    t0 = time.perf_counter()
    print(f"{env['device_name']}, torch {env['torch']}, {env['threads']} threads", flush=True)
    with tempfile.TemporaryDirectory(prefix="cmcl-bench-paper-") as tmp:
        runs = [run_scale(Path(tmp), s, tasks_n, args, device, epochs, emb) for s in scales]
        mem = run_scale(Path(tmp), 1.0, min(4, tasks_n), args, device, 1, emb) if probe else None
    main_run, anchor = runs[-1], args.methods[0]
    scale, n_train, n_test = main_run["scale"], main_run["train_pairs"], main_run["test_pairs"]
    what = (f"{tasks_n} tasks x {n_train}/{n_test} train/test pairs (scale {scale}), d="
            f"{args.dim}, {epochs} epochs; train every step + evaluate every step on every task")
    figures, extra = {}, {}
    for m in args.methods:
        r = main_run["methods"][m]
        fit = {k: extrapolate([(x["scale"], x["methods"][m][k]) for x in runs])
               for k in ("chain_wall_s", "chain_cpu_s")}
        extra[m] = fit
        figures[f"paper_chain_wall_s_{m}"] = figure(r["chain_wall_s"], "s", env, None,
                                                    f"measured: {what}")
        figures[f"paper_chain_cpu_s_{m}"] = figure(
            r["chain_cpu_s"], "s", env, None,
            "measured, process CPU time of the same chain (steadier on a shared machine)")
        figures[f"paper_peak_rss_mb_{m}"] = figure(r["peak_rss_mb"], "MB", env, None,
                                                   f"measured at scale {scale} (peak RSS, VmHWM)")
        # on CPU the process CPU time of the single-threaded chain is what its wall time is on
        # an idle machine; wall time on a shared one includes waiting for a core
        k = "chain_cpu_s" if device.type == "cpu" else "chain_wall_s"
        if scale >= 1.0:  # measured at full size: nothing to extrapolate
            continue
        figures[f"paper_{k}_{m}_extrapolated_full"] = figure(
            fit[k]["value"], "s", env, None,
            f"EXTRAPOLATED to 11 x {TRAIN_FULL}/{TEST_FULL} pairs, {epochs} epochs: "
            f"{fit[k]['how']}" + (" (CPU time: ~ the wall time on an idle machine; wall-time "
                                  "extrapolation, load-dependent, is in the JSON)"
                                  if k == "chain_cpu_s" else ""))
        if mem:
            p = mem["methods"][m]
            figures[f"paper_peak_rss_mb_{m}_full_size"] = figure(
                p["peak_rss_mb"], "MB", env, None,
                f"measured (not extrapolated): {mem['tasks']} tasks at full size "
                f"({mem['train_pairs']}/{mem['test_pairs']} pairs, all 4 modalities), 1 epoch, "
                "evaluated every step (peak RSS of the chain's process, VmHWM)")
        if m != anchor:
            a = main_run["methods"][anchor]
            figures[f"paper_chain_{m}_vs_{anchor}"] = figure(
                r["chain_cpu_s"] / a["chain_cpu_s"], "x", env, None,
                f"chain CPU time ratio at scale {scale} (wall-time ratio: "
                f"{r['chain_wall_s'] / a['chain_wall_s']:.2f})")
    env["loadavg_end"] = os.getloadavg()
    out = {"benchmark": "paper_scale", "env": env, "figures": figures,
           "config": {"scales": scales, "tasks": tasks_n, "full_train_pairs": TRAIN_FULL,
                      "full_test_pairs": TEST_FULL, "d": args.dim, "embed_dim": emb,
                      "epochs": epochs, "batch_size": 64, "modalities": MODALITIES,
                      "methods": args.methods, "anchor": anchor, "memory_probe": probe},
           "runs": runs, "memory_probe": mem, "extrapolated_full": extra}
    return save_result(out, args.out, t0)


if __name__ == "__main__":
    main(sys.argv[1:])
