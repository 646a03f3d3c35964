"""Shard I/O: sharding a corpus vs `tar`, and reading feature shards vs memory and training.

(a) Sharding MB/s: 2,000 files of realistic sizes (image-like ~32 KiB, audio-like ~64 KiB,
    caption-like ~256 B; log-normal, incompressible bytes) in the generic corpus layout
    (manifest.jsonl, two file columns per row: 1,000 pairs), sharded by `cmcl.shards.shard_task`
    (1,000 samples per shard: reading the manifest and files, pairing, tars, sizes.json,
    index.parquet, meta) with `workers` 1 and 2. Anchor: `tar -cf` of the same 2,000 files.
    MB/s = payload bytes of the files / seconds (the members cmcl adds are not counted).
(b) Feature reads, d = 1024, two modalities, one tar (the embed stage's format), in samples/s:
    `read_features` (the whole split into memory, what training does once per task);
    `FeatureStream` batches of 64, shuffled, through a DataLoader with 0 (in-process), 1 and 2
    workers (the streaming path for data larger than memory); `np.load` of one .npy per
    modality (no shards). Anchors: iterating the same features held in memory as tensors in
    shuffled batches of 64 (index gather), and a bare training step at d = 1024, batch 64 (two
    linear heads d -> d, symmetric InfoNCE, AdamW): a reader faster than that step never makes
    training input-bound.
(c) Decode-heavy sharding, what `workers` is for: VGGSound-layout mp4 clips (4 s, 32x32
    video, 44.1 kHz stereo AAC) through the `vggsound` adapter, which probes each video and
    decodes and resamples its audio track to 16 kHz WAV; samples/s at 1 and 2 workers (wall).

Clock `cpu` counts this process's CPU time plus that of its finished children (tar, pool and
DataLoader workers), so parallel cases report the CPU they cost; `wall` is elapsed time.

    python benchmarks/bench_io.py --clock cpu --threads 1 --out benchmarks/results/io.json
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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_train import write_feature_split
from benchlib import add_common_args, figure, median, save_result, setup, sync
from torch.utils.data import DataLoader

from cmcl.shards import read_features, shard_task
from cmcl.streams import FeatureStream

KINDS = {  # name: (extension, median bytes, log-normal sigma, share of the files)
    "image": ("jpg", 32 * 1024, 0.6, 0.5),
    "audio": ("flac", 64 * 1024, 0.5, 0.25),
    "text": ("txt", 256, 0.5, 0.25),
}
WORKERS = (1, 2)


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


def write_manifest(root: Path, files: list[tuple[str, Path]]) -> int:
    """Generic layout: row i pairs file i with file i + n/2 (media with captions, as before)."""
    items = [f for f in files if f[0] != "text"] + [f for f in files if f[0] == "text"]
    half = len(items) // 2
    rows = [{"id": f"s{i:06d}", "split": "train", "label": i % 10,
             "a": str(items[i][1].relative_to(root)),
             "b": str(items[half + i][1].relative_to(root))} for i in range(half)]
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "corpus.json").write_text(json.dumps({"modalities": {"a": "file", "b": "file"}}))
    return half


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def clocks() -> tuple[float, float]:
    """(wall, CPU of this process and its reaped children)."""
    return time.perf_counter(), time.process_time() + child_cpu()


def since(t0: tuple[float, float]) -> tuple[float, float]:
    t1 = clocks()
    return t1[0] - t0[0], t1[1] - t0[1]


def time_shard(root: Path, out: Path, workers: int) -> tuple[float, float]:
    task = {"name": "bench", "corpus": "bench", "modalities": ["a", "b"]}
    t0 = clocks()
    # random bytes named .jpg/.flac: copy speed against tar, so the files are not decoded
    shard_task(task, {"path": str(root), "options": {"verify": False}}, "train", out,
               samples_per_shard=1000, workers=workers)
    return since(t0)


def time_tar(root: Path, rel: list[str], out: Path) -> tuple[float, float]:
    listing = root.parent / f"{out.name}.list"
    listing.write_text("\n".join(rel) + "\n")
    t0 = clocks()
    subprocess.run(["tar", "-cf", str(out), "-C", str(root), "-T", str(listing)], check=True)
    return since(t0)


def part_a(tmp: Path, n_files: int, repeats: int, which: int) -> dict:
    root = tmp / "files"
    files = make_files(root, n_files)
    records = write_manifest(root, files)
    total = sum(p.stat().st_size for _, p in files)
    rel = [str(p.relative_to(root)) for _, p in files]
    kinds = [f"w{w}" for w in WORKERS] + ["tar"]
    rows: dict[str, list] = {k: [] for k in kinds}
    for r in range(repeats + 1):  # the first round warms the page cache and imports
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            out = tmp / f"out_{kind}_{r}"
            if kind == "tar":
                wc = time_tar(root, rel, out)
                written = out.stat().st_size
                out.unlink()
            else:
                wc = time_shard(root, out, int(kind[1:]))
                written = sum(f.stat().st_size for f in out.glob("*.tar"))
                shutil.rmtree(out)
            if r:
                rows[kind].append({"wall_s": wc[0], "cpu_s": wc[1], "tar_bytes": written,
                                   "mb_per_s": total / 1e6 / wc[which],
                                   "samples_per_s": records / wc[which]})
    ratios = {k: [c["mb_per_s"] / t["mb_per_s"] for c, t in zip(rows[k], rows["tar"],
                                                                 strict=True)] for k in kinds[:-1]}
    sizes = np.array([p.stat().st_size for _, p in files])
    return {"files": len(files), "payload_mb": total / 1e6, "records": records,
            "file_size_bytes": {"median": int(np.median(sizes)), "mean": int(sizes.mean()),
                                "min": int(sizes.min()), "max": int(sizes.max())},
            "kinds": {k: {"ext": v[0], "median_bytes": v[1], "sigma": v[2], "share": v[3]}
                      for k, v in KINDS.items()},
            "mb_per_s": {k: median(x["mb_per_s"] for x in rows[k]) for k in kinds},
            "samples_per_s": {k: median(x["samples_per_s"] for x in rows[k]) for k in kinds},
            "ratio_median": {k: median(v) for k, v in ratios.items()},
            "round_ratios": ratios, "rounds": rows}


def make_clips(root: Path, n: int, seconds: float = 4.0) -> None:
    """VGGSound layout: n mp4 clips (32x32 mpeg4 at 8 fps, 44.1 kHz stereo AAC) + csv."""
    import av

    rows = []
    rate = 44100
    for i in range(n):
        (root / "video").mkdir(parents=True, exist_ok=True)
        with av.open(str(root / f"video/yt{i:05d}_{0:06d}.mp4"), mode="w") as c:
            vs = c.add_stream("mpeg4", rate=8)
            vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p"
            a = c.add_stream("aac", rate=rate, layout="stereo")
            for k in range(int(8 * seconds)):
                img = np.full((32, 32, 3), (7 * i + 11 * k) % 255, np.uint8)
                c.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            c.mux(vs.encode())
            t = np.arange(int(rate * seconds), dtype=np.float32) / rate
            pcm = (0.3 * np.sin(2 * np.pi * (200 + 10 * i) * t))[None].repeat(2, 0)
            for k in range(0, pcm.shape[1], 1024):
                fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, k:k + 1024]),
                                                format="fltp", layout="stereo")
                fr.sample_rate = rate
                c.mux(a.encode(fr))
            c.mux(a.encode())
        rows.append(f"yt{i:05d},0,class {i % 5},train\n")
    (root / "vggsound.csv").write_text("".join(rows))


def part_c(tmp: Path, n_clips: int, repeats: int, which: int) -> dict:
    """Decode-heavy sharding (VGGSound: probe each mp4, decode and resample its audio track):
    what `workers` is for. samples/s at 1 and 2 workers."""
    root = tmp / "vggsound"
    make_clips(root, n_clips)
    task = {"name": "va", "corpus": "vgg", "modalities": ["video", "audio"]}
    corpus = {"path": str(root), "adapter": "vggsound"}
    rows: dict[str, list] = {f"w{w}": [] for w in WORKERS}
    for r in range(repeats + 1):
        for w in WORKERS if r % 2 == 0 else WORKERS[::-1]:
            t0 = clocks()
            shard_task(task, corpus, "train", tmp / f"out{w}_{r}", workers=w)
            if r:
                rows[f"w{w}"].append(since(t0))
            shutil.rmtree(tmp / f"out{w}_{r}")
    sps = {k: {c: n_clips / median(t[i] for t in v) for i, c in enumerate(("wall", "cpu"))}
           for k, v in rows.items()}
    return {"clips": n_clips, "samples_per_s": sps, "seconds_wall_cpu": rows,
            "speedup_w2_wall": sps["w2"]["wall"] / sps["w1"]["wall"],
            "cpu_cost_w2": sps["w1"]["cpu"] / sps["w2"]["cpu"]}


def train_step_fn(d: int, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One bare contrastive step of two linear heads (the anchor for 'input-bound')."""
    heads = torch.nn.ModuleList([torch.nn.Linear(d, d, bias=False) for _ in range(2)]).to(device)
    opt = torch.optim.AdamW(heads.parameters(), lr=0.01, weight_decay=1e-3)

    def step(xa: torch.Tensor, xb: torch.Tensor) -> None:
        za, zb = (F.normalize(h(x), dim=-1) for h, x in zip(heads, (xa, xb), strict=True))
        logits = za @ zb.T / 0.1
        target = torch.arange(len(xa), device=device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def part_b(tmp: Path, n: int, d: int, repeats: int, which: int, device: torch.device) -> dict:
    rng = np.random.default_rng(1)
    feats = {m: rng.standard_normal((n, d), dtype=np.float32) for m in ("text", "image")}
    fdir = tmp / "features"
    write_feature_split(fdir, feats, rng.integers(0, 10, n), "bench_io", "train")
    npy = {m: tmp / f"{m}.npy" for m in feats}
    for m, p in npy.items():
        np.save(p, feats[m])
    shard_mb = sum(p.stat().st_size for p in fdir.glob("*.tar")) / 1e6
    mem = {m: torch.from_numpy(a).to(device) for m, a in feats.items()}
    gen = torch.Generator().manual_seed(0)
    step = train_step_fn(d, device)
    n_steps = max(4, min(n // 64, 40))

    def memory_batches() -> None:
        perm = torch.randperm(n, generator=gen).to(device)
        for i in range(0, n, 64):
            idx = perm[i:i + 64]
            _ = [mem[m][idx] for m in mem]

    def stream(workers: int) -> Callable[[], None]:
        def run() -> None:
            s = FeatureStream(fdir, batch_size=64, shuffle=True, rank=0, world_size=1)
            for b in DataLoader(s, batch_size=None, num_workers=workers):
                _ = [b[m].to(device) for m in feats]
        return run

    def train_steps() -> None:
        for i in range(n_steps):
            idx = slice(i * 64, (i + 1) * 64)
            step(mem["text"][idx], mem["image"][idx])

    cases = {"read_features": lambda: read_features(fdir),
             **{f"stream_w{w}": stream(w) for w in (0, 1, 2)},
             "np_load": lambda: {m: np.load(p, allow_pickle=False) for m, p in npy.items()},
             "memory_batches_64": memory_batches, "train_step_64": train_steps}
    count = {k: n_steps * 64 if k == "train_step_64" else n for k in cases}
    times: dict[str, list] = {k: [] for k in cases}
    for r in range(repeats + 1):
        for k, fn in cases.items():
            sync(device)
            t0 = clocks()
            fn()
            sync(device)
            if r:  # the first round warms the page cache and starts the threads
                times[k].append(since(t0))
    sps = {k: count[k] / median(t[which] for t in v) for k, v in times.items()}
    return {"pairs": n, "d": d, "modalities": 2, "shard_mb": shard_mb, "train_steps": n_steps,
            "samples_per_s": sps, "seconds_wall_cpu": times,
            "read_mb_per_s": shard_mb * sps["read_features"] / n,
            "vs_memory": {k: v / sps["memory_batches_64"] for k, v in sps.items()},
            "vs_train_step": {k: v / sps["train_step_64"] for k, v in sps.items()}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, "benchmarks/results/io.json")
    ap.add_argument("--files", type=int, default=None, help="default 2000 (quick 200)")
    ap.add_argument("--pairs", type=int, default=None, help="feature pairs, default 10000")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=None, help="default 5 (quick 1)")
    args = ap.parse_args(argv)
    device, env = setup(ap, args)
    which = 0 if args.clock == "wall" else 1
    n_files = args.files or (200 if args.quick else 2000)
    pairs = args.pairs or (500 if args.quick else 10_000)
    repeats = args.repeats or (1 if args.quick else 5)
    t0 = time.perf_counter()
    print(f"{env['device_name']}, clock {args.clock}", flush=True)
    with tempfile.TemporaryDirectory(prefix="cmcl-bench-io-") as tmp:
        a = part_a(Path(tmp) / "a", n_files, repeats, which)
        mb = a["mb_per_s"]
        print(f"(a) {a['files']} files, {a['payload_mb']:.1f} MB: shard_task "
              + ", ".join(f"{w} worker(s) {mb[f'w{w}']:.0f} MB/s" for w in WORKERS)
              + f"; tar {mb['tar']:.0f} MB/s", flush=True)
        c = part_c(Path(tmp) / "c", 12 if args.quick else 60, repeats, which)
        print(f"(c) {c['clips']} VGGSound clips: " + ", ".join(
            f"{k} {v['wall']:.1f}/s wall, {v['cpu']:.1f}/s CPU"
            for k, v in c["samples_per_s"].items()), flush=True)
        b = part_b(Path(tmp) / "b", pairs, args.dim, repeats, which, device)
        s = b["samples_per_s"]
        print(f"(b) {pairs} pairs d={args.dim}: " + ", ".join(f"{k} {v:.0f}/s"
                                                             for k, v in s.items()), flush=True)
    best = max(a["ratio_median"].values())
    figures = {
        "sharding_vs_tar_mbps": figure(best, "x", env, (">=", 0.5),
                                       "shard_task MB/s (best of 1 and 2 workers) / tar -cf MB/s"),
        **{f"sharding_vs_tar_mbps_w{w}": figure(a["ratio_median"][f"w{w}"], "x", env, None,
                                                f"shard_task, {w} worker(s)") for w in WORKERS},
        "shard_write_vs_tar": figure(a["ratio_median"]["w1"], "x", env, None,
                                     "shard_task MB/s / tar -cf MB/s, 1 worker, same files"),
        **{f"sharding_mb_per_s_w{w}": figure(mb[f"w{w}"], "MB/s", env) for w in WORKERS},
        **{f"sharding_samples_per_s_w{w}": figure(a["samples_per_s"][f"w{w}"], "samples/s", env)
           for w in WORKERS},
        "tar_write_mb_per_s": figure(mb["tar"], "MB/s", env),
        "sharding_decode_speedup_w2": figure(
            c["speedup_w2_wall"], "x", env, None,
            "VGGSound-layout clips (audio decoded): wall samples/s, 2 workers / 1 worker"),
        "feature_read_vs_memory": figure(
            b["vs_memory"]["read_features"], "x", env, None,
            "read_features samples/s / in-memory shuffled batches of 64 samples/s"),
        **{f"feature_stream_vs_memory_w{w}": figure(
            b["vs_memory"][f"stream_w{w}"], "x", env, None,
            f"FeatureStream batches of 64, DataLoader num_workers={w}") for w in (0, 1, 2)},
        "feature_read_vs_train_step": figure(
            b["vs_train_step"]["read_features"], "x", env, (">=", 1.0),
            "read_features samples/s / bare training samples/s at d=1024, batch 64"),
        "feature_stream_vs_train_step": figure(
            min(b["vs_train_step"][f"stream_w{w}"] for w in (0, 1, 2)), "x", env, (">=", 1.0),
            "slowest FeatureStream setting / bare training samples/s at d=1024, batch 64"),
        **{f"{k}_samples_per_s": figure(v, "samples/s", env) for k, v in s.items()},
    }
    env["loadavg_end"] = os.getloadavg()
    out = {"benchmark": "io", "env": env, "figures": figures, "sharding": a, "decode": c,
           "feature_read": b, "config": {"files": n_files, "pairs": pairs, "d": args.dim,
                                         "repeats": repeats, "workers": list(WORKERS)}}
    return save_result(out, args.out, t0)


if __name__ == "__main__":
    main(sys.argv[1:])
