"""Tar writing and reading on the same shard data: cmcl's shard functions, webdataset, tarfile.

Two synthetic cases (incompressible payloads), 1,000 samples per tar (params.yaml's default):
- features: 20,000 samples of a 512-d float32 `.npy` (2,176 B) and a label (`cls`): what the
  embed stage writes and train/evaluate read (`read_features`).
- media: 200 samples of a 512 KiB `image.jpg`, a caption (`text.txt`) and a label: few large
  members, what the shard stage writes and embed streams.
Backends, each writing and reading the same records:
- cmcl: `cmcl.shards.write_shards` (tars + sizes.json + index.parquet: the hand-written
  `cmcl.tario` writer), `iter_samples` (raw samples of a folder: webdataset's tar iterators
  plus cmcl's checks), `read_features` (the features case decoded into arrays, sha256 checked:
  the hand-written mmap reader);
- webdataset: `TarWriter(mtime=0)`, `WebDataset(urls, shardshuffle=False)` (+ `.decode()` of
  the npy and a stack, for the decoded read);
- tarfile: `TarInfo` + `addfile` (PAX), and iterating members grouped into samples by key.
And the shard stage itself: bench_io's sharding case (`shard_task` on 2,000 files of
image/audio/caption sizes) with cmcl's tar writer, then with webdataset's `TarWriter(mtime=0)`
put in its place, MB/s of payload.
Anchors measured in the same run: `tar -cf` of the same files (sharding's target, bench_io:
>= 0.5x), and a bare batch-64 training step at d = 512 (two linear heads, InfoNCE, AdamW): a
reader faster than that step never makes training input-bound (bench_io's target).

    python benchmarks/bench_tar.py --clock cpu --threads 1 --out benchmarks/results/tar.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from bench_io import clocks, make_files, since, time_shard, time_tar, train_step_fn, write_manifest
from benchlib import add_common_args, figure, median, save_result, setup

from cmcl import tario
from cmcl.shards import iter_samples, npy_bytes, read_features, write_shards

PER_SHARD = 1000
BACKENDS = ("cmcl", "webdataset", "tarfile")


def records(case: str, n: int, d: int, media_bytes: int) -> list[dict]:
    """The case's records, encoded once (every backend writes the same bytes)."""
    rng = np.random.default_rng(0)
    if case == "features":
        x = rng.standard_normal((n, d), dtype=np.float32)
        return [{"__key__": f"s{i:07d}", "cls": str(i % 10), "feature.npy": npy_bytes(x[i])}
                for i in range(n)]
    return [{"__key__": f"s{i:07d}", "cls": str(i % 10), "image.jpg": rng.bytes(media_bytes),
             "text.txt": f"a photo of the digit {i % 10}"} for i in range(n)]


def members(rec: dict) -> Iterator[tuple[str, bytes]]:
    for k in sorted(rec):
        if not k.startswith("_"):
            v = rec[k]
            yield f"{rec['__key__']}.{k}", v.encode() if isinstance(v, str) else v


def chunks(recs: list[dict]) -> Iterator[tuple[int, list[dict]]]:
    for i in range(0, len(recs), PER_SHARD):
        yield i // PER_SHARD, recs[i:i + PER_SHARD]


def write_cmcl(out: Path, recs: list[dict]) -> None:
    write_shards(out, recs, PER_SHARD)


def write_wds(out: Path, recs: list[dict]) -> None:
    import webdataset as wds

    for k, part in chunks(recs):
        with wds.TarWriter(str(out / f"{k:06d}.tar"), mtime=0) as w:
            for r in part:
                w.write(r)


def write_tarfile(out: Path, recs: list[dict]) -> None:
    for k, part in chunks(recs):
        with tarfile.open(out / f"{k:06d}.tar", "w", format=tarfile.PAX_FORMAT) as tar:
            for r in part:
                for name, data in members(r):
                    info = tarfile.TarInfo(name)
                    info.size, info.mode, info.uname, info.gname = len(data), 0o444, "bigdata", \
                        "bigdata"
                    tar.addfile(info, io.BytesIO(data))


def urls(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.glob("*.tar"))


def read_cmcl(folder: Path) -> int:
    return sum(1 for _ in iter_samples(folder))


def read_wds(folder: Path) -> int:
    import webdataset as wds

    return sum(1 for _ in wds.WebDataset(urls(folder), shardshuffle=False, empty_check=False))


def read_tarfile(folder: Path) -> int:
    n = 0
    for url in urls(folder):
        key = None
        with tarfile.open(url) as tar:
            for info in tar:
                k = info.name.split(".", 1)[0]
                tar.extractfile(info).read()
                n, key = n + (k != key), k
    return n


def decoded_cmcl(folder: Path) -> int:
    return len(read_features(folder)["feature"])


def decoded_wds(folder: Path) -> int:
    import webdataset as wds

    ds = wds.WebDataset(urls(folder), shardshuffle=False, empty_check=False).decode(
        wds.handle_extension("npy", lambda b: np.load(io.BytesIO(b), allow_pickle=False)),
        post=[])
    rows = [(s["feature.npy"], int(s["cls"])) for s in ds]
    return len(np.stack([r[0] for r in rows]))


WRITERS = {"cmcl": write_cmcl, "webdataset": write_wds, "tarfile": write_tarfile}
READERS = {"cmcl": read_cmcl, "webdataset": read_wds, "tarfile": read_tarfile}
DECODERS = {"cmcl": decoded_cmcl, "webdataset": decoded_wds}


def folder_for(tmp: Path, name: str, recs: list[dict]) -> Path:
    """A shard folder as cmcl writes it (tars, sizes.json, index.parquet, meta.json)."""
    from cmcl.io import write_json

    out = tmp / name
    out.mkdir()
    write_cmcl(out, recs)
    write_json(out / "meta.json", {"modalities": ["feature"]})
    return out


def run_case(tmp: Path, case: str, recs: list[dict], repeats: int, which: int) -> dict:
    n = len(recs)
    payload = sum(len(v) for r in recs for _, v in members(r))
    src = folder_for(tmp, f"{case}_src", recs)
    jobs: dict[str, Callable[[], object]] = {}
    for b, write in WRITERS.items():
        def job(write=write, b=b) -> None:
            out = tmp / f"{case}_{b}_out"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            write(out, recs)
        jobs[f"write_{b}"] = job
    for b, read in READERS.items():
        jobs[f"read_{b}"] = lambda read=read: read(src)
    if case == "features":
        for b, dec in DECODERS.items():
            jobs[f"decoded_{b}"] = lambda dec=dec: dec(src)
    times: dict[str, list] = {k: [] for k in jobs}
    for r in range(repeats + 1):  # round 0 warms the page cache and the imports
        for k in list(jobs) if r % 2 else list(jobs)[::-1]:
            t0 = clocks()
            jobs[k]()
            if r:
                times[k].append(since(t0))
    sps = {k: n / median(t[which] for t in v) for k, v in times.items()}
    tar_mb = sum(p.stat().st_size for p in src.glob("*.tar")) / 1e6
    return {"samples": n, "payload_mb": payload / 1e6, "tar_mb": tar_mb,
            "samples_per_s": sps, "mb_per_s": {k: v * payload / n / 1e6 for k, v in sps.items()},
            "seconds_wall_cpu": times}


class _TarWriterOut:
    """webdataset's TarWriter in the place of `tario.TarOut` (what shard_task would cost on it)."""

    def __init__(self, path: Path) -> None:
        import webdataset as wds

        self.f = open(path, "wb")  # noqa: SIM115  (closed by close())
        self.w = wds.TarWriter(self.f, mtime=0, encoder=False)

    @property
    def size(self) -> int:
        return self.w.tarstream.offset

    def add(self, members: list[tuple[str, bytes]]) -> tuple[int, int]:
        start = self.size
        key = members[0][0].split(".", 1)[0]
        self.w.write({"__key__": key, **{n.split(".", 1)[1]: b for n, b in members}})
        return start, self.size - start - tario.pad(len(members[-1][1]))

    def close(self) -> None:
        self.w.close()
        self.f.close()


def sharding(tmp: Path, n_files: int, repeats: int, which: int) -> dict:
    """shard_task MB/s with cmcl's writer and with webdataset's, and `tar -cf` of the files."""
    root = tmp / "files"
    files = make_files(root, n_files)
    write_manifest(root, files)
    total = sum(p.stat().st_size for _, p in files)
    rel = [str(p.relative_to(root)) for _, p in files]
    # members go to TarOut.add as they are (record size, used only for max_shard_bytes, unset)
    wds_writer = [mock.patch.object(tario, "TarOut", _TarWriterOut),
                  mock.patch.object(tario, "record_bytes", lambda members: members)]
    rows: dict[str, list] = {k: [] for k in BACKENDS[:2] + ("tar_cf",)}
    for r in range(repeats + 1):
        for k in list(rows) if r % 2 else list(rows)[::-1]:
            out = tmp / f"shard_{k}_{r}"
            if k == "tar_cf":
                wc = time_tar(root, rel, out)
                out.unlink()
            else:
                with contextlib.ExitStack() as stack:
                    for patch in wds_writer if k == "webdataset" else []:
                        stack.enter_context(patch)
                    wc = time_shard(root, out, 1)
                shutil.rmtree(out)
            if r:
                rows[k].append(wc)
    mbps = {k: total / 1e6 / median(t[which] for t in v) for k, v in rows.items()}
    return {"files": len(files), "payload_mb": total / 1e6, "mb_per_s": mbps,
            "seconds_wall_cpu": rows}


def train_anchor(d: int, device: torch.device, steps: int, repeats: int, which: int) -> float:
    """Bare batch-64 training samples/s at d (the reader's 'input-bound' line)."""
    step = train_step_fn(d, device)
    x = torch.randn(steps * 64, d, device=device)
    times = []
    for r in range(repeats + 1):
        t0 = clocks()
        for i in range(steps):
            step(x[i * 64:(i + 1) * 64], x[i * 64:(i + 1) * 64].flip(0))
        if r:
            times.append(since(t0)[which])
    return steps * 64 / median(times)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, "benchmarks/results/tar.json")
    ap.add_argument("--features", type=int, default=None, help="samples, default 20000")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--media", type=int, default=None, help="samples, default 200")
    ap.add_argument("--media-kib", type=int, default=512)
    ap.add_argument("--files", type=int, default=None, help="sharding case, default 2000")
    ap.add_argument("--repeats", type=int, default=None, help="default 3 (quick 1)")
    args = ap.parse_args(argv)
    device, env = setup(ap, args)
    which = 0 if args.clock == "wall" else 1
    n_feat = args.features or (2000 if args.quick else 20_000)
    n_media = args.media or (20 if args.quick else 200)
    repeats = args.repeats or (1 if args.quick else 3)
    n_files = args.files or (200 if args.quick else 2000)
    t0 = time.perf_counter()
    print(f"{env['device_name']}, clock {args.clock}", flush=True)
    cases = {}
    with tempfile.TemporaryDirectory(prefix="cmcl-bench-tar-") as tmp:
        for case, n in (("features", n_feat), ("media", n_media)):
            recs = records(case, n, args.dim, args.media_kib * 1024)
            cases[case] = run_case(Path(tmp), case, recs, repeats, which)
            print(f"{case}: " + ", ".join(f"{k} {v:,.0f}/s"
                                          for k, v in cases[case]["samples_per_s"].items()),
                  flush=True)
        shard = sharding(Path(tmp) / "sharding", n_files, repeats, which)
        print("sharding: " + ", ".join(f"{k} {v:,.0f} MB/s" for k, v in shard["mb_per_s"].items()),
              flush=True)
    train = train_anchor(args.dim, device, 20 if args.quick else 60, repeats, which)
    print(f"bare training step, d={args.dim}, batch 64: {train:,.0f} samples/s", flush=True)
    figures = {}
    for case, c in cases.items():
        s = c["samples_per_s"]
        for k, v in s.items():
            figures[f"tar_{case}_{k}_samples_per_s"] = figure(v, "samples/s", env)
        for op in ("write", "read", "decoded"):
            if f"{op}_cmcl" in s:
                figures[f"tar_{case}_{op}_webdataset_vs_cmcl"] = figure(
                    s[f"{op}_webdataset"] / s[f"{op}_cmcl"], "x", env, None,
                    f"webdataset samples/s / cmcl samples/s, {case}, {op}")
    f = cases["features"]["samples_per_s"]
    figures["tar_features_decoded_webdataset_vs_train_step"] = figure(
        f["decoded_webdataset"] / train, "x", env, (">=", 1.0),
        f"webdataset decoded feature read / bare training samples/s at d={args.dim}, batch 64")
    figures["tar_features_decoded_cmcl_vs_train_step"] = figure(
        f["decoded_cmcl"] / train, "x", env, (">=", 1.0),
        f"read_features samples/s / bare training samples/s at d={args.dim}, batch 64")
    sm = shard["mb_per_s"]
    for b in BACKENDS[:2]:
        figures[f"tar_sharding_{b}_mb_per_s"] = figure(sm[b], "MB/s", env)
        figures[f"tar_sharding_{b}_vs_tar_cf"] = figure(
            sm[b] / sm["tar_cf"], "x", env, (">=", 0.5),
            f"shard_task MB/s with the {b} tar writer / tar -cf MB/s, {n_files} files")
    env["loadavg_end"] = os.getloadavg()
    out = {"benchmark": "tar", "env": env, "figures": figures, "cases": cases,
           "sharding": shard, "train_step_samples_per_s": train,
           "config": {"features": n_feat, "dim": args.dim, "media": n_media,
                      "media_kib": args.media_kib, "files": n_files, "per_shard": PER_SHARD,
                      "repeats": repeats}}
    return save_result(out, args.out, t0)


if __name__ == "__main__":
    main(sys.argv[1:])
