"""Helpers shared by the benchmark scripts: device, clocks, environment record, figures.

Every benchmark writes a JSON with an `env` block (device, device name, threads, clock, load)
and a `figures` block: {name: {value, unit, device, device_name, target?, met?, note?}}, so the
device travels with every figure. run_all.py flattens the figures into summary.json.
"""

from __future__ import annotations

import argparse
import operator
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from bench_subspace import device_name, sync  # one definition of the device name

from cmcl.io import write_json

__all__ = ["CLOCKS", "add_common_args", "device_name", "env_info", "figure", "median",
           "setup", "sync", "timed"]

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
OPS = {">=": operator.ge, "<=": operator.le}


def add_common_args(ap: argparse.ArgumentParser, out: str) -> None:
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    ap.add_argument("--out", type=Path, default=Path(out))
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--clock", choices=list(CLOCKS), default="wall",
                    help="cpu: process CPU time, steadier than wall time on a shared machine")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads; 1 gives steadier numbers on a shared machine")


def setup(ap: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[torch.device, dict]:
    """Apply --threads/--clock, check the device, return (device, env record)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: CUDA is not available on this machine")
    if args.clock == "cpu" and device.type != "cpu":
        ap.error("--clock cpu measures host CPU time; use --clock wall on an accelerator")
    return device, env_info(device, args.clock)


def env_info(device: torch.device, clock: str) -> dict:
    return {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "clock": clock, "loadavg_start": os.getloadavg(),
            "argv": sys.argv[1:]}


def figure(value: float | None, unit: str, env: dict, target: tuple[str, float] | None = None,
           note: str | None = None) -> dict:
    """One reported number with its device and, if it has one, its target and whether it is met."""
    out = {"value": value, "unit": unit, "device": env["device"],
           "device_name": env["device_name"]}
    if target is not None:
        op, bound = target
        out["target"] = f"{op} {bound:g}"
        out["met"] = None if value is None else bool(OPS[op](value, bound))
    if note:
        out["note"] = note
    return out


def median(xs: Iterable[float]) -> float:
    return statistics.median(list(xs))


def timed(fn: Callable[[], object], clock: Callable[[], float],
          device: torch.device | None = None) -> tuple[float, object]:
    """(seconds by `clock`, result) of one call, synchronising an accelerator around it."""
    if device is not None:
        sync(device)
    t = clock()
    res = fn()
    if device is not None:
        sync(device)
    return clock() - t, res


def save_result(out: dict, path: str, t0: float) -> dict:
    """Stamp the total run time, write the JSON atomically and say where it went."""
    out["total_seconds"] = round(time.perf_counter() - t0, 1)
    write_json(path, out)
    print(f"wrote {path} in {out['total_seconds']:.0f} s")
    return out
