"""Shard I/O: writing WebDataset shards vs `tar`, and reading feature shards vs memory.

(a) Sharding MB/s: 2,000 files of realistic sizes (image-like ~32 KiB, audio-like ~64 KiB,
    caption-like ~256 B; log-normal, incompressible bytes) are paired into 1,000 records the
    way `shard_task` builds them (`__key__`, `json`, `cls`, two payloads) and written with
    `cmcl.shards.write_shards` (1,000 samples per shard), reading each file's bytes inside the
    record generator as the corpus adapter does. Anchor: `tar -cf` of the same 2,000 files.
    MB/s = payload bytes of the files / seconds (the tar members cmcl adds are not counted).
    CPU clock: this process's CPU time for cmcl, the child's (getrusage) for tar.
(b) Feature-shard read: `cmcl.shards.read_features` of a feature-shard folder in the embed
    format (d = 1024, two modalities) in samples/s, against iterating the same features held in
    memory as tensors in shuffled batches of 64 (index gather = one copy of every byte, as a
    training loop's batches do). Also shown: `np.load` of one .npy per modality (no shards).

    python benchmarks/bench_io.py --device cpu --out benchmarks/results/io.json
"""

from __future__ import annotations

import argparse
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
from benchlib import CLOCKS, add_common_args, figure, median, save_result, setup, sync

from cmcl.shards import read_features, write_shards

KINDS = {  # name: (extension, median bytes, log-normal sigma, share of the files)
    "image": ("jpg", 32 * 1024, 0.6, 0.5),
    "audio": ("flac", 64 * 1024, 0.5, 0.25),
    "text": ("txt", 256, 0.5, 0.25),
}


def make_files(root: Path, n_files: int, seed: int = 0) -> list[tuple[str, Path]]:
    """n_files files of the KINDS mix; returns (kind, path) in creation order."""
    rng = np.random.default_rng(seed)
    files: list[tuple[str, Path]] = []
    counts = [round(n_files * v[3]) for v in KINDS.values()]
    counts[-1] = n_files - sum(counts[:-1])
    for (kind, (ext, med, sigma, _)), n in zip(KINDS.items(), counts, strict=True):
        (root / kind).mkdir(parents=True, exist_ok=True)
        sizes = np.clip(rng.lognormal(np.log(med), sigma, n), 16, 16 * med).astype(int)
        for i, size in enumerate(sizes):
            p = root / kind / f"{i:06d}.{ext}"
            p.write_bytes(rng.bytes(int(size)))
            files.append((kind, p))
    return files


def pair_up(files: list[tuple[str, Path]]) -> list[tuple[tuple[str, Path], tuple[str, Path]]]:
    """Two files per record: each image or audio file with a caption, the rest among themselves."""
    text = [f for f in files if f[0] == "text"]
    media = [f for f in files if f[0] != "text"]
    items = media + text
    half = len(items) // 2
    return [(items[i], items[half + i]) for i in range(half)]


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def time_cmcl_write(pairs, out: Path, clock_name: str) -> tuple[float, float]:
    """(wall, cpu) seconds of write_shards, reading the files inside the record generator."""

    def records():
        for i, ((ka, pa), (kb, pb)) in enumerate(pairs):
            ea, eb = KINDS[ka][0], KINDS[kb][0]
            ma, mb = (ka, kb) if ka != kb else (f"{ka}0", f"{kb}1")
            yield {"__key__": f"s{i:07d}", "json": {"id": f"{pa.stem}+{pb.stem}", "label": i % 10},
                   "cls": i % 10, f"{ma}.{ea}": pa.read_bytes(), f"{mb}.{eb}": pb.read_bytes()}

    out.mkdir(parents=True)
    w, c = time.perf_counter(), time.process_time()
    write_shards(out, records(), samples_per_shard=1000)
    return time.perf_counter() - w, time.process_time() - c


def time_tar(root: Path, rel: list[str], out: Path) -> tuple[float, float]:
    listing = root.parent / f"{out.name}.list"
    listing.write_text("\n".join(rel) + "\n")
    w, c = time.perf_counter(), child_cpu()
    subprocess.run(["tar", "-cf", str(out), "-C", str(root), "-T", str(listing)], check=True)
    return time.perf_counter() - w, child_cpu() - c


def part_a(tmp: Path, n_files: int, repeats: int, clock_name: str) -> dict:
    root = tmp / "files"
    files = make_files(root, n_files)
    total = sum(p.stat().st_size for _, p in files)
    pairs = pair_up(files)
    rel = [str(p.relative_to(root)) for _, p in files]
    which = 0 if clock_name == "wall" else 1
    rows: dict[str, list] = {"cmcl": [], "tar": []}
    for r in range(repeats + 1):  # the first round warms the page cache and imports
        order = ("cmcl", "tar") if r % 2 == 0 else ("tar", "cmcl")
        for kind in order:
            out = tmp / f"out_{kind}_{r}"
            if kind == "cmcl":
                wc = time_cmcl_write(pairs, out, clock_name)
                written = sum(f.stat().st_size for f in out.glob("*.tar"))
                shutil.rmtree(out)
            else:
                wc = time_tar(root, rel, out)
                written = out.stat().st_size
                out.unlink()
            if r:
                rows[kind].append({"wall_s": wc[0], "cpu_s": wc[1], "tar_bytes": written,
                                   "mb_per_s": total / 1e6 / wc[which]})
    ratios = [c["mb_per_s"] / t["mb_per_s"] for c, t in zip(rows["cmcl"], rows["tar"],
                                                            strict=True)]
    sizes = np.array([p.stat().st_size for _, p in files])
    return {"files": len(files), "payload_mb": total / 1e6, "records": len(pairs),
            "file_size_bytes": {"median": int(np.median(sizes)), "mean": int(sizes.mean()),
                                "min": int(sizes.min()), "max": int(sizes.max())},
            "kinds": {k: {"ext": v[0], "median_bytes": v[1], "sigma": v[2], "share": v[3]}
                      for k, v in KINDS.items()},
            "cmcl_mb_per_s": median(x["mb_per_s"] for x in rows["cmcl"]),
            "tar_mb_per_s": median(x["mb_per_s"] for x in rows["tar"]),
            "ratio_median": median(ratios), "round_ratios": ratios, "rounds": rows}


def part_b(tmp: Path, n: int, d: int, repeats: int, clock, device: torch.device) -> dict:
    rng = np.random.default_rng(1)
    feats = {m: rng.standard_normal((n, d), dtype=np.float32) for m in ("text", "image")}
    labels = rng.integers(0, 10, n)
    fdir = tmp / "features"
    write_feature_split(fdir, feats, labels, "bench_io", "train")
    npy = {m: tmp / f"{m}.npy" for m in feats}
    for m, p in npy.items():
        np.save(p, feats[m])
    shard_mb = sum(p.stat().st_size for p in fdir.glob("*.tar")) / 1e6
    mem = {m: torch.from_numpy(a).to(device) for m, a in feats.items()}
    gen = torch.Generator().manual_seed(0)

    def iterate_memory() -> float:
        perm = torch.randperm(n, generator=gen).to(device)
        acc = 0.0
        for i in range(0, n, 64):
            idx = perm[i:i + 64]
            batch = [mem[m][idx] for m in mem]
            acc += float(batch[0].shape[0])
        return acc

    cases = {"read_features": lambda: read_features(fdir),
             "np_load": lambda: {m: np.load(p, allow_pickle=False) for m, p in npy.items()},
             "memory_batches_64": iterate_memory}
    times: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(repeats + 1):
        for k, fn in cases.items():
            sync(device)
            t = clock()
            fn()
            sync(device)
            if r:  # the first round warms the page cache
                times[k].append(clock() - t)
    sps = {k: n / median(v) for k, v in times.items()}
    ratios = [times["memory_batches_64"][i] / times["read_features"][i] for i in range(repeats)]
    return {"pairs": n, "d": d, "modalities": 2, "shard_mb": shard_mb,
            "samples_per_s": sps, "seconds": times,
            "read_mb_per_s": shard_mb / median(times["read_features"]),
            "ratio_median": median(ratios), "round_ratios": ratios}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, "benchmarks/results/io.json")
    ap.add_argument("--files", type=int, default=None, help="default 2000 (quick 200)")
    ap.add_argument("--pairs", type=int, default=None, help="feature pairs, default 10000")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=None, help="default 5 (quick 1)")
    args = ap.parse_args(argv)
    device, env = setup(ap, args)
    clock = CLOCKS[args.clock]
    n_files = args.files or (200 if args.quick else 2000)
    pairs = args.pairs or (500 if args.quick else 10_000)
    repeats = args.repeats or (1 if args.quick else 5)
    t0 = time.perf_counter()
    print(f"{env['device_name']}, clock {args.clock}", flush=True)
    with tempfile.TemporaryDirectory(prefix="cmcl-bench-io-") as tmp:
        a = part_a(Path(tmp) / "a", n_files, repeats, args.clock)
        print(f"(a) {a['files']} files, {a['payload_mb']:.1f} MB: write_shards "
              f"{a['cmcl_mb_per_s']:.0f} MB/s, tar {a['tar_mb_per_s']:.0f} MB/s, ratio "
              f"{a['ratio_median']:.2f}", flush=True)
        b = part_b(Path(tmp) / "b", pairs, args.dim, repeats, clock, device)
        s = b["samples_per_s"]
        print(f"(b) {pairs} pairs d={args.dim}: read_features {s['read_features']:.0f}/s "
              f"({b['read_mb_per_s']:.0f} MB/s), np.load {s['np_load']:.0f}/s, memory "
              f"batches {s['memory_batches_64']:.0f}/s, ratio {b['ratio_median']:.4f}",
              flush=True)
    figures = {
        "shard_write_vs_tar": figure(a["ratio_median"], "x", env, None,
                                     "write_shards MB/s / tar -cf MB/s, same files"),
        "shard_write_mb_per_s": figure(a["cmcl_mb_per_s"], "MB/s", env),
        "tar_write_mb_per_s": figure(a["tar_mb_per_s"], "MB/s", env),
        "feature_read_vs_memory": figure(
            b["ratio_median"], "x", env, None,
            "read_features samples/s / in-memory shuffled batches of 64 samples/s"),
        "feature_read_samples_per_s": figure(s["read_features"], "samples/s", env),
        "memory_batches_samples_per_s": figure(s["memory_batches_64"], "samples/s", env),
        "npy_load_samples_per_s": figure(s["np_load"], "samples/s", env,
                                         note="one .npy per modality, no shards"),
    }
    env["loadavg_end"] = os.getloadavg()
    out = {"benchmark": "io", "env": env, "figures": figures, "sharding": a,
           "feature_read": b, "config": {"files": n_files, "pairs": pairs, "d": args.dim,
                                         "repeats": repeats}}
    return save_result(out, args.out, t0)


if __name__ == "__main__":
    main(sys.argv[1:])
