"""Cost of the subspace methods (DNS, GPM, Adam-NSCL) at ImageBind scale, with the real code.

(a) ms per optimizer step inside the real `cmcl.train.fit_task` loop (AdamW, clipping, batch
    64, one modality pair, d_in = d_out = 1024) for fine-tuning, DNS exact/faithful/rotated,
    GPM (gradient, update, rotated), Adam-NSCL (update, rotated) and the DNS authors' dense
    formulation (P_out G P_in with dense d×d projectors: four d³ products per step).
    Faithful DNS and GPM's gradient placement run their factored path (the batch gradient
    Δᵀ X projected through its B×d factors); exact DNS, GPM update and Adam-NSCL project the
    dense AdamW update, O(d²k); the rotated placements train in the projectors' eigenbases.
    Per-step time = interval between successive `after_optimizer_step` calls, so it covers
    data, forward, backward, clipping, hooks and AdamW. The past is synthetic: covariances of
    rank 300 and 700 of 1024, so both the basis and the complement paths of Projector run.
    Projectors are derived once per method (the per-task eigendecomposition is part (b)) and
    `after_task` is skipped (its covariance update is part (b) too).
    `--clock cpu` times CPU seconds of this process instead of wall time: on a machine shared
    with other jobs, waiting for a core is then not counted (CPU only, one thread advised).
(b) seconds to stream n samples (batches of 1024) into a RunningCovariance and derive a
    Projector (eigh) for d = 384, 768, 1024 and n = 10k, 30k, 100k, plus a PNG plot.

    python benchmarks/bench_subspace.py --device cpu --out benchmarks/results/subspace.json

The stored results/subspace.json was made with `--threads 1 --clock cpu --rounds 5` on a
2-core machine shared with other jobs (its `argv` and `env` record this); there, two intra-op
threads spent most of their time waiting and wall-clock medians moved by 2x from run to run.
Even CPU time is not immune: a neighbour's memory traffic slows the AdamW-bound fine-tuning
step (the anchor) by up to 1.5x for a while, so the p10 ratios and the per-round ratios are
reported beside the medians.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cmcl.io import write_json
from cmcl.models import MultiHead
from cmcl.strategies import Strategy, TaskContext, get_strategy
from cmcl.strategies.dns import DNS
from cmcl.subspace import (
    Projector,
    RunningCovariance,
    SubspaceState,
    null_space_update,
    null_space_update_,
)
from cmcl.train import fit_task

D, BATCH, N_OLD = 1024, 64, 100_000
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock: Callable[[], float] = time.perf_counter  # main() may switch to CPU time
RANKS = {"a": {"in": 300, "out": 700}, "b": {"in": 700, "out": 300}}  # basis and complement
REL = {"threshold_mode": "relative"}
VARIANTS: dict[str, tuple[str, dict]] = {  # name -> (method or prototype, options)
    "finetune": ("finetune", {}),
    "dns_exact": ("dns", {"placement": "exact", **REL}),
    "dns_faithful": ("dns", {"placement": "faithful", **REL}),
    "gpm_gradient": ("gpm", {"placement": "gradient", **REL, "threshold": 1e-3}),
    "gpm_update": ("gpm", {"placement": "update", **REL, "threshold": 1e-3}),
    "adam_nscl": ("adam_nscl", {}),
    "dns_rotated": ("dns", {"placement": "rotated", **REL}),
    "gpm_rotated": ("gpm", {"placement": "rotated", **REL, "threshold": 1e-3}),
    "adam_nscl_rotated": ("adam_nscl", {"placement": "rotated"}),
    "dense_authors": ("dense", {"placement": "faithful", **REL}),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(ln.split(":", 1)[1].strip() for ln in out.splitlines()
                    if ln.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or platform.machine()


class DenseDNS(DNS):
    """The DNS authors' formulation: dense d×d projectors, G ← G − P_out G P_in per step."""

    def before_task(self, ctx: TaskContext) -> None:
        super().before_task(ctx)
        self.dense = {m: (po.matrix(), pi.matrix()) for m, (po, pi) in self.proj.items()}

    @torch.no_grad()
    def before_optimizer_step(self, ctx: TaskContext) -> None:
        for m, (p_out, p_in) in self.dense.items():
            g = ctx.model.heads[m].weight.grad
            g -= p_out @ g @ p_in


def synthetic_cov(d: int, rank: int, seed: int) -> torch.Tensor:
    """U diag(λ) Uᵀ with λ linear from 1 to 0.05 over `rank` random orthonormal directions."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(d, rank, generator=g, dtype=torch.float64))
    return (u * torch.linspace(1, 0.05, rank, dtype=torch.float64)) @ u.T


def past_state() -> SubspaceState:
    """A state as if N_OLD pairs had been seen; projectors cached (one eigh per side). GPM and
    Adam-NSCL get it too: they read only its input side."""
    st = SubspaceState({"a": D, "b": D}, D)
    for i, (m, r) in enumerate(RANKS.items()):
        for side, covs in (("in", st.in_cov), ("out", st.out_cov)):
            covs[m].total = synthetic_cov(D, r[side], 10 * i + len(side)) * N_OLD
            covs[m].count = N_OLD
    st.global_count = N_OLD
    st.projector = functools.lru_cache(maxsize=None)(st.projector)  # type: ignore[method-assign]
    return st


def make_strategy(kind: str, opts: dict, state: SubspaceState) -> Strategy:
    cfg = {"methods": {"dns" if kind == "dense" else kind: opts}}
    strat = DenseDNS(cfg) if kind == "dense" else get_strategy(kind, cfg)
    if kind != "finetune":
        strat.state = state
    return strat


def instrument(strat: Strategy, device: torch.device) -> tuple[list[float], list[float]]:
    """Timestamps after each optimizer step and the time spent in the two step hooks."""
    stamps: list[float] = []
    hooks: list[float] = []
    before, after = strat.before_optimizer_step, strat.after_optimizer_step

    def timed_before(ctx: TaskContext) -> None:
        sync(device)
        t = clock()
        before(ctx)
        sync(device)
        hooks.append(clock() - t)

    def timed_after(ctx: TaskContext) -> None:
        t = clock()
        after(ctx)
        sync(device)
        stamps.append(clock())
        hooks[-1] += stamps[-1] - t

    strat.before_optimizer_step, strat.after_optimizer_step = timed_before, timed_after
    strat.after_task = lambda ctx: None
    return stamps, hooks


def run_variant(kind: str, opts: dict, state: SubspaceState, device: torch.device, steps: int,
                warmup: int) -> dict:
    model = MultiHead({"a": D, "b": D}, D)
    model.reset("identity", 0)
    strat = make_strategy(kind, opts, state)
    stamps, hooks = instrument(strat, device)
    n = BATCH * (steps + warmup + 1)
    g = torch.Generator().manual_seed(1)
    xa, xb = (torch.randn(n, D, generator=g) / D ** 0.5 for _ in range(2))
    cfg = {"train": {"epochs": 1, "batch_size": BATCH, "lr": 1e-4, "weight_decay": 1e-3,
                     "grad_clip": 1.0, "cpu": device.type == "cpu"},
           "loss": {}, "methods": strat.cfg.get("methods", {})}
    t0 = time.perf_counter()
    _, log = fit_task(model, strat, cfg, {"name": "bench", "modalities": ("a", "b")}, 1, 0,
                      xa, xb, torch.arange(n))
    step_ms = [1e3 * (b - a) for a, b in zip(stamps, stamps[1:], strict=False)][warmup:]
    return {"step_ms": step_ms, "hook_ms": [1e3 * h for h in hooks[warmup + 1:]],
            "fit_seconds": time.perf_counter() - t0,
            "ranks": next((v for k, v in log.items() if k.endswith("_ranks")), None)}


def part_a(state: SubspaceState, device: torch.device, steps: int, warmup: int,
           rounds: int) -> dict:
    raw: dict[str, list[dict]] = {k: [] for k in VARIANTS}
    # a discarded short run of every variant first: until some run has freed big (8 MB)
    # blocks, glibc's allocator keeps returning 4 MB tensors to the OS and faulting fresh pages
    # back in, which made fine-tuning (the anchor) 1.4x slower in round 0 than in later rounds
    for kind, opts in VARIANTS.values():
        run_variant(kind, opts, state, device, 2, 1)
    for r in range(rounds):  # interleaved rounds spread a shared machine's load over variants
        for name, (kind, opts) in VARIANTS.items():
            raw[name].append(run_variant(kind, opts, state, device, steps, warmup))
            print(f"  round {r} {name}: {statistics.median(raw[name][-1]['step_ms']):.1f} "
                  "ms/step", flush=True)
    out = {}
    for name, runs in raw.items():
        ms = [t for run in runs for t in run["step_ms"]]
        hk = [t for run in runs for t in run["hook_ms"]]
        dec = statistics.quantiles(ms, n=10)
        out[name] = {"median_ms": statistics.median(ms), "min_ms": min(ms), "p10_ms": dec[0],
                     "p90_ms": dec[-1],
                     "hook_median_ms": statistics.median(hk),
                     "round_medians_ms": [statistics.median(r["step_ms"]) for r in runs],
                     "fit_seconds": [round(r["fit_seconds"], 2) for r in runs],
                     "ranks": runs[0]["ranks"], "steps_timed": len(ms)}
    # p10 ratios are the steadier figure when other jobs share the cores (they only add time)
    for stat in ("median", "p10"):
        base = out["finetune"][f"{stat}_ms"]
        for v in out.values():
            v[f"ratio_{stat}_vs_finetune"] = v[f"{stat}_ms"] / base
    # and per round: a neighbour's memory traffic slows the AdamW-bound fine-tuning step by up
    # to 1.5x for minutes, so a ratio within one round compares like with like
    for v in out.values():
        v["round_ratios_vs_finetune"] = [a / b for a, b in zip(
            v["round_medians_ms"], out["finetune"]["round_medians_ms"], strict=True)]
    return out


def timeit(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Best of `reps` in ms (as the timeit module advises: other load only adds time)."""
    fn()
    times = []
    for _ in range(reps):
        sync(device)
        t = clock()
        fn()
        sync(device)
        times.append(clock() - t)
    return 1e3 * min(times)


def profile_head(p_out: Projector, p_in: Projector, device: torch.device, reps: int) -> dict:
    """ms of each piece of one head's hook work per step, for each placement."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(D, D, generator=g).to(device)
    before = w.clone()
    delta = 1e-3 * torch.randn(D, D, generator=g).to(device)
    dd, xx = (torch.randn(BATCH, D, generator=g).to(device) for _ in range(2))
    grad = dd.T @ xx  # a batch gradient is D_zᵀ X: rank <= batch
    low = grad - p_out.left(dd.T) @ p_in.right(xx)
    assert torch.allclose(low, null_space_update(grad, p_out, p_in), rtol=1e-4, atol=1e-4)
    po_d, pi_d = p_out.matrix(), p_in.matrix()
    rot = p_in.eigenbasis().to(w)
    cases = {
        "snapshot_clone": lambda: w.detach().clone(),
        "delta_and_writeback": lambda: w.copy_(before + (w - before)),
        "projector_to_noop": lambda: p_in.basis.to(w),
        "right_P_in": lambda: p_in.right(delta),
        "left_P_out": lambda: p_out.left(delta),
        "null_space_update": lambda: null_space_update(delta, p_out, p_in),
        "exact_in_place_W_minus_P_out_dW_P_in": lambda: null_space_update_(w, w - before,
                                                                           p_out, p_in),
        "dense_authors_P_out_G_P_in": lambda: grad - po_d @ grad @ pi_d,
        "factored_grad_P_out_DtX_P_in": lambda: grad.addmm_(p_out.left(dd.T), p_in.right(xx),
                                                            alpha=-1e-9),
        "rotate_batch_X_R": lambda: xx @ rot,
        "batch_wgrad_DtX": lambda: dd.T @ xx,
    }
    return {"ranks": {"out": p_out.rank, "in": p_in.rank, "stored_out": p_out.basis.shape[1],
                      "stored_in": p_in.basis.shape[1]},
            "ms": {k: timeit(fn, device, reps) for k, fn in cases.items()}}


def profile_heads(state: SubspaceState, device: torch.device, reps: int) -> dict:
    """Where a step's projection time goes, per head and placement."""
    dns = DNS({"methods": {"dns": REL}})
    dns.state = state
    return {m: profile_head(*(p.to(device, torch.float32) for p in dns.projectors(m)), device,
                            reps) for m in ("a", "b")}


def part_b(ds: list[int], ns: list[int], batch: int, repeats: int) -> list[dict]:
    rows = []
    for d in ds:
        gen = torch.Generator().manual_seed(d)
        pool = [torch.randn(batch, d, generator=gen) for _ in range(4)]
        for n in ns:
            upd, eig = [], []
            for _ in range(repeats):
                acc, left, i = RunningCovariance(d), n, 0
                t = clock()
                while left > 0:
                    x = pool[i % len(pool)][: min(batch, left)]
                    acc.update(x)
                    left, i = left - len(x), i + 1
                upd.append(clock() - t)
                t = clock()
                p = Projector.from_covariance(acc.matrix(), "relative", 1e-3)
                eig.append(clock() - t)
            row = {"d": d, "n": n, "update_s": min(upd), "eigh_projector_s": min(eig),
                   "total_s": min(upd) + min(eig), "rank": p.rank, "repeats": repeats}
            rows.append(row)
            print(f"  d={d} n={n}: update {row['update_s']:.2f} s, "
                  f"eigh {row['eigh_projector_s']:.2f} s", flush=True)
    return rows


def plot_b(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for d in sorted({r["d"] for r in rows}):
        rs = [r for r in rows if r["d"] == d]
        line, = ax.plot([r["n"] for r in rs], [r["total_s"] for r in rs], "o-",
                        label=f"d={d} update+eigh")
        ax.plot([r["n"] for r in rs], [r["update_s"] for r in rs], "--", color=line.get_color(),
                label=f"d={d} update only")
    ax.set(xscale="log", yscale="log", xlabel="samples per task n",
           ylabel="seconds per task", title="covariance update + eigendecomposition")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/subspace.json"))
    ap.add_argument("--steps", type=int, default=20, help="timed steps per run (a)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved runs per variant (a)")
    ap.add_argument("--profile-reps", type=int, default=7)
    ap.add_argument("--dims", type=int, nargs="+", default=[384, 768, 1024])
    ap.add_argument("--samples", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    ap.add_argument("--scaling-repeats", type=int, default=2)
    ap.add_argument("--clock", choices=list(CLOCKS), default="wall",
                    help="cpu: process CPU time, steadier than wall time on a shared machine")
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads; 1 gives steadier numbers on a shared machine")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        ap.error("--clock cpu measures host CPU time; use --clock wall on an accelerator")
    global clock
    clock = CLOCKS[args.clock]
    t0 = time.perf_counter()
    env = {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
           "python": platform.python_version(), "threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "clock": args.clock, "loadavg_start": os.getloadavg()}
    print(f"{env['device_name']}, torch {env['torch']}, {env['threads']} threads", flush=True)
    print("(a) step time at d=1024", flush=True)
    state = past_state()
    step = part_a(state, device, args.steps, args.warmup, args.rounds)
    print("profile of the projections per head", flush=True)
    prof = profile_heads(state, device, args.profile_reps)
    print("(b) covariance update + eigh", flush=True)
    rows = part_b(args.dims, args.samples, 1024, args.scaling_repeats)
    png = args.out.parent / "subspace_scaling.png"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot_b(rows, png)
    env["loadavg_end"] = os.getloadavg()
    write_json(args.out, {
        "env": env, "argv": sys.argv[1:],
        "config": {"d": D, "batch": BATCH, "optimizer": "AdamW lr 1e-4 wd 1e-3 clip 1.0",
                   "past_ranks": RANKS, "threshold": "relative 1e-3 (Adam-NSCL default; GPM and"
                   " DNS set to it so every method projects the same ranks)",
                   "variants": {k: {"method": v[0], "options": v[1]} for k, v in VARIANTS.items()},
                   "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds},
        "step_time": step, "profile_per_head": prof,
        "scaling": rows, "scaling_plot": png.name,
        "total_seconds": round(time.perf_counter() - t0, 1)})
    print(f"{'variant':22s} {'median ms':>9s} {'p10 ms':>7s} {'hooks ms':>8s} {'x ft med':>8s} "
          f"{'x ft p10':>8s}")
    for k, v in step.items():
        print(f"{k:22s} {v['median_ms']:9.1f} {v['p10_ms']:7.1f} {v['hook_median_ms']:8.1f} "
              f"{v['ratio_median_vs_finetune']:8.2f} {v['ratio_p10_vs_finetune']:8.2f}")
    print(f"wrote {args.out} and {png} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
