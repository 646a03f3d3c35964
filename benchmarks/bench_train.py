"""Training throughput of cmcl's train step on feature shards vs a bare PyTorch loop.

cmcl's path, as a user runs it: features are written as feature shards exactly as the embed
stage writes them (`write_shards` of `<modality>.npy` records + meta.json, one tar per split),
read back with `cmcl.shards.read_features`, and trained with `cmcl.train.fit_task` (fine-tuning
strategy, Accelerate-prepared model/optimizer/DataLoader, hooks, per-step finiteness check).
The bare loop: the same two bias-free nn.Linear heads (d -> d by default, the paper's heads;
same initial weights), the same loss (`cmcl.losses.info_nce`, default options), AdamW (lr 0.01,
wd 1e-3), clipping at 1.0, batch 64, the same epochs and number of optimizer steps, on
in-memory tensors (a shuffled index per epoch).

One-time process start-up (imports, the Accelerator, a warm-up run of both loops) is excluded.
Reading the shards is timed separately and reported as its own line (and folded into a second,
"incl. reading" ratio). Rounds alternate which loop goes first; the headline ratio is the median
over rounds of cmcl samples/s ÷ bare samples/s measured back to back, and
`train_throughput_vs_bare` is the lower of the d = 768 and d = 1024 ratios. A second estimate,
robust to load bursts, compares median per-step intervals (it leaves out per-epoch costs).

    python benchmarks/bench_train.py --device cpu --out benchmarks/results/train.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import set_seed
from benchlib import CLOCKS, add_common_args, figure, median, save_result, setup, timed
from torch import nn

from cmcl.io import atomic_dir, write_json
from cmcl.losses import info_nce
from cmcl.models import MultiHead
from cmcl.settings import LossSettings
from cmcl.shards import npy_bytes, read_features, write_shards
from cmcl.strategies import get_strategy
from cmcl.train import fit_task, make_accelerator

MODS = ("text", "image")
TARGET = (">=", 0.90)


def synthetic_pairs(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paired features with a shared latent (so the loss actually trains) and 10 classes."""
    gen = torch.Generator().manual_seed(seed)  # torch, not numpy: it honours --threads
    labels = torch.randint(0, 10, (n,), generator=gen)
    z = torch.randn(10, d, generator=gen)[labels] + torch.randn(n, d, generator=gen)
    xa = z + 0.5 * torch.randn(n, d, generator=gen)
    mix = torch.randn(d, d, generator=gen) / d ** 0.5  # modality b sees the latent mixed
    xb = z @ mix + 0.5 * torch.randn(n, d, generator=gen)
    return (xa / d ** 0.5).numpy(), (xb / d ** 0.5).numpy(), labels.numpy()


def write_feature_split(out: Path, feats: dict[str, np.ndarray], labels: np.ndarray,
                        task: str, split: str, extra_meta: dict | None = None) -> None:
    """A feature-shard folder in the embed stage's format (see cmcl.embed.embed_split)."""
    mods = list(feats)
    n = len(labels)

    def records():
        for i in range(n):
            key = f"{task}_{split}_{i:07d}"
            rec = {"__key__": key, "json": {"id": key, "label": int(labels[i])},
                   "cls": int(labels[i])}
            for m in mods:
                rec[f"{m}.npy"] = npy_bytes(feats[m][i])
            yield rec

    meta = {"task": task, "split": split, "modalities": mods, "count": n, "classes": None,
            "templates": None, "encoders": {m: "synthetic" for m in mods},
            "dims": {m: int(feats[m].shape[1]) for m in mods}, "dtype": "float32",
            **(extra_meta or {})}
    with atomic_dir(out) as tmp:
        write_shards(tmp, records(), samples_per_shard=max(1, n))
        write_json(tmp / "meta.json", meta)


def train_cfg(epochs: int, device: torch.device) -> dict:
    """params.yaml's training settings (lr 0.01, wd 1e-3, clip 1.0, batch 64)."""
    return {"train": {"epochs": epochs, "batch_size": 64, "lr": 0.01, "weight_decay": 1e-3,
                      "grad_clip": 1.0, "deterministic": True, "cpu": device.type == "cpu"},
            "loss": {}, "methods": {}}


def init_heads(d: int, embed_dim: int) -> MultiHead:
    model = MultiHead({m: d for m in MODS}, embed_dim)
    model.reset("orthogonal", 0)  # identity when square, as in the paper
    return model


def run_cmcl(feat_dir: Path, d: int, embed_dim: int, cfg: dict, acc, clock, device) -> dict:
    """read_features + fit_task, the two timed separately."""
    read_s, data = timed(lambda: read_features(feat_dir), clock)
    xa, xb = (torch.from_numpy(data[m]) for m in MODS)
    labels = torch.from_numpy(data["labels"])
    model = init_heads(d, embed_dim)
    strategy = get_strategy("finetune", cfg)
    stamps: list[float] = []
    hook = strategy.after_optimizer_step

    def stamped(ctx) -> None:  # per-step intervals: a second, burst-robust estimate
        hook(ctx)
        stamps.append(clock())

    strategy.after_optimizer_step = stamped
    task = {"name": "bench", "modalities": MODS}
    fit_s, (_, log) = timed(lambda: fit_task(model, strategy, cfg, task, 1, 1, xa, xb, labels,
                                             acc), clock, device)
    steps = len(xa) // cfg["train"]["batch_size"]
    samples = steps * cfg["train"]["batch_size"] * cfg["train"]["epochs"]
    return {"read_s": read_s, "fit_s": fit_s, "samples": samples, "n": len(xa),
            "step_ms": 1e3 * median(np.diff(stamps)), "final_loss": log["epoch_loss"][-1]}


def run_bare(xa: torch.Tensor, xb: torch.Tensor, d: int, embed_dim: int, cfg: dict, clock,
             device: torch.device) -> dict:
    """The reference loop: what one would write by hand for the same training."""
    tc = cfg["train"]
    bs, lc = tc["batch_size"], LossSettings.of(cfg["loss"]).nce()
    ref = init_heads(d, embed_dim)
    heads = nn.ModuleDict({m: nn.Linear(d, embed_dim, bias=False) for m in MODS}).to(device)
    heads.load_state_dict({k.removeprefix("heads."): v for k, v in ref.state_dict().items()})
    params = list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=tc["lr"], weight_decay=tc["weight_decay"])
    gen = torch.Generator().manual_seed(1)
    n, steps = len(xa), len(xa) // bs
    stamps: list[float] = []

    def loop() -> float:
        xa_d, xb_d = xa.to(device), xb.to(device)
        total = torch.zeros((), device=device)
        for _ in range(tc["epochs"]):
            perm = torch.randperm(n, generator=gen).to(device)
            total.zero_()
            for i in range(steps):
                idx = perm[i * bs:(i + 1) * bs]
                loss = info_nce(heads[MODS[0]](xa_d[idx]), heads[MODS[1]](xb_d[idx]), **lc)
                loss.backward()
                nn.utils.clip_grad_norm_(params, tc["grad_clip"])
                opt.step()
                opt.zero_grad(set_to_none=True)
                total += loss.detach()
                stamps.append(clock())
        return total.item() / steps

    secs, final = timed(loop, clock, device)
    return {"fit_s": secs, "samples": steps * bs * tc["epochs"],
            "step_ms": 1e3 * median(np.diff(stamps)), "final_loss": final}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, "benchmarks/results/train.json")
    ap.add_argument("--dims", type=int, nargs="+", default=[768, 1024])
    ap.add_argument("--embed-dim", type=int, default=None,
                    help="head output size (default: d, the paper's d->d heads)")
    ap.add_argument("--pairs", type=int, default=None, help="pairs per task (default 2048)")
    ap.add_argument("--epochs", type=int, default=None, help="default 5 (params.yaml)")
    ap.add_argument("--rounds", type=int, default=None, help="default 7")
    args = ap.parse_args(argv)
    device, env = setup(ap, args)
    clock = CLOCKS[args.clock]
    pairs = args.pairs or (256 if args.quick else 2048)
    epochs = args.epochs or (1 if args.quick else 5)
    rounds = args.rounds or (1 if args.quick else 7)
    t_start = time.perf_counter()
    print(f"{env['device_name']}, torch {env['torch']}, {env['threads']} threads, clock "
          f"{args.clock}", flush=True)
    cfg = train_cfg(epochs, device)
    set_seed(1, deterministic=True)  # what train_step does before fit_tasks
    startup_s, acc = timed(lambda: make_accelerator(cfg["train"]), time.perf_counter)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="cmcl-bench-train-") as tmp:
        dirs = {}
        for d in args.dims:
            xa, xb, labels = synthetic_pairs(pairs, d, seed=d)
            dirs[d] = Path(tmp) / f"d{d}"
            write_feature_split(dirs[d], dict(zip(MODS, (xa, xb), strict=True)), labels,
                                f"bench_d{d}", "train")
            emb = args.embed_dim or d
            # warm-up: first calls pay lazy initialisation (excluded as process start-up)
            warm = train_cfg(1, device)
            run_cmcl(dirs[d], d, emb, warm, acc, clock, device)
            run_bare(torch.from_numpy(xa), torch.from_numpy(xb), d, emb, warm, clock, device)
            results[d] = {"cmcl": [], "bare": []}
        for r in range(rounds):
            for d in args.dims:
                emb = args.embed_dim or d
                data = read_features(dirs[d])  # the bare loop gets the same tensors
                xa, xb = (torch.from_numpy(data[m]) for m in MODS)
                order = ("cmcl", "bare") if r % 2 == 0 else ("bare", "cmcl")
                for which in order:
                    if which == "cmcl":
                        res = run_cmcl(dirs[d], d, emb, cfg, acc, clock, device)
                    else:
                        res = run_bare(xa, xb, d, emb, cfg, clock, device)
                    res["samples_per_s"] = res["samples"] / res["fit_s"]
                    results[d][which].append(res)
                c, b = results[d]["cmcl"][-1], results[d]["bare"][-1]
                print(f"  round {r} d={d}: cmcl {c['samples_per_s']:.0f}/s (read "
                      f"{c['read_s']:.2f} s), bare {b['samples_per_s']:.0f}/s, ratio "
                      f"{c['samples_per_s'] / b['samples_per_s']:.3f}", flush=True)
    per_d, figures = {}, {}
    for d, res in results.items():
        c, b = res["cmcl"], res["bare"]
        ratios = [x["samples_per_s"] / y["samples_per_s"] for x, y in zip(c, b, strict=True)]
        incl = [x["samples"] / (x["fit_s"] + x["read_s"]) / y["samples_per_s"]
                for x, y in zip(c, b, strict=True)]
        read_sps = [x["n"] / x["read_s"] for x in c]
        step_ratio = median(y["step_ms"] / x["step_ms"] for x, y in zip(c, b, strict=True))
        per_d[d] = {
            "cmcl_samples_per_s": median(x["samples_per_s"] for x in c),
            "bare_samples_per_s": median(y["samples_per_s"] for y in b),
            "cmcl_incl_read_samples_per_s": median(x["samples"] / (x["fit_s"] + x["read_s"])
                                                   for x in c),
            "shard_read_s": median(x["read_s"] for x in c),
            "shard_read_samples_per_s": median(read_sps),
            "ratio_median": median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "ratio_incl_read_median": median(incl), "round_ratios": ratios,
            "cmcl_step_ms": median(x["step_ms"] for x in c),
            "bare_step_ms": median(y["step_ms"] for y in b), "step_time_ratio": step_ratio,
            "final_loss_cmcl": c[-1]["final_loss"], "final_loss_bare": b[-1]["final_loss"],
            "rounds": {"cmcl": c, "bare": b}}
        figures[f"train_throughput_vs_bare_d{d}"] = figure(
            per_d[d]["ratio_median"], "x", env, TARGET,
            "median over rounds of cmcl fit_task samples/s / bare loop samples/s")
        figures[f"train_step_rate_vs_bare_d{d}"] = figure(
            step_ratio, "x", env, None, "bare median ms/step / cmcl median ms/step (per-step "
            "intervals: robust to load bursts, excludes per-epoch costs)")
        figures[f"train_throughput_incl_read_vs_bare_d{d}"] = figure(
            per_d[d]["ratio_incl_read_median"], "x", env, None,
            f"cmcl counting read_features of the shards once per task ({epochs} epochs)")
        for name, key in (("cmcl_train", "cmcl_samples_per_s"),
                          ("bare_train", "bare_samples_per_s"),
                          ("train_shard_read", "shard_read_samples_per_s")):
            figures[f"{name}_samples_per_s_d{d}"] = figure(per_d[d][key], "samples/s", env)
    worst = min(args.dims, key=lambda d: per_d[d]["ratio_median"])
    figures["train_throughput_vs_bare"] = figure(
        per_d[worst]["ratio_median"], "x", env, TARGET,
        f"the lower of d={args.dims} (here d={worst}); batch 64, AdamW, clip 1.0, InfoNCE")
    env["loadavg_end"] = os.getloadavg()
    out = {"benchmark": "train", "env": env,
           "config": {"dims": args.dims, "embed_dim": args.embed_dim or "d", "pairs": pairs,
                      "epochs": epochs, "rounds": rounds, "batch_size": 64, "modalities": MODS,
                      "optimizer": "AdamW lr 0.01 wd 1e-3, clip 1.0",
                      "loss": LossSettings.of({}).nce(),
                      "accelerator_startup_s_excluded": startup_s},
           "figures": figures, "per_d": per_d}
    for d in args.dims:
        p = per_d[d]
        print(f"d={d}: cmcl {p['cmcl_samples_per_s']:.0f} samples/s, bare "
              f"{p['bare_samples_per_s']:.0f} samples/s, ratio {p['ratio_median']:.3f} "
              f"(incl. reading {p['ratio_incl_read_median']:.3f}); shard read "
              f"{p['shard_read_samples_per_s']:.0f} samples/s")
    save_result(out, args.out, t_start)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
