"""Preemption checkpoints of a training step in progress (`train.checkpoint_every`).

A killed or requeued `train` job resumes from its last checkpoint and ends with the weights an
uninterrupted run ends with, bit for bit. A checkpoint lives beside the step folder, in
`<out>.resume/ckpt-<optimizer step>/` (so the step folder still appears only when complete):

    accelerate/     acc.save_state: model (safetensors), optimizer and RNG states
    strategy_<rank>.*  the method's in-task state (task_state, below), safetensors + JSON;
                    one per process, as each holds its own replay buffer, generators, ...
    loop.*          where the loop was: epoch, batches done in it, losses so far, and the
                    shuffling generator's state at the start of that epoch

It is used only if its fingerprint (config, method, seed, step, data, previous step, process
count) matches the job's. Resuming rebuilds the step start exactly as a fresh run does
(previous step, `load_state`, `before_task`), then puts back model, optimizer, RNGs and the
method's in-task state, and replays the epoch's shuffling up to the saved batch.

The method's in-task state is whatever its per-batch hooks changed since `before_task`
(replay buffers and their RNGs, counters, adapters): the Strategy hook pair
`task_state() -> (json, tensors)` / `load_task_state(json, tensors)`. By default `snapshot`
records the strategy's attributes structurally (tensors, generators, containers, plain
objects) and `restore` writes them back in place, so optimizers keep pointing at the same
tensors. Nothing is unpickled: strategy and loop state are safetensors + JSON, and the
Accelerate files are read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmcl.identity import TRAIN_IGNORES, Stage
from cmcl.io import load_tensors, read_json, save_tensors, write_json

# set by the constructor from the config, which the fingerprint pins: not in-task state
CONSTRUCTOR_ATTRS = ("cfg", "opts")
ACCELERATE_FILES = ("model.safetensors", "optimizer.bin")  # + random_states_<rank>.pkl


@dataclass(frozen=True)
class Resume:
    """Checkpointing of one training step: where, for which inputs, how often."""

    root: Path  # <out_dir>.resume
    fingerprint: str
    every: int  # optimizer steps between checkpoints

    def due(self, global_step: int, last: int) -> bool:
        """A checkpoint after this step? Not after the last one: the step folder follows."""
        return global_step % self.every == 0 and global_step < last


def resume_dir(out_dir: str | Path) -> Path:
    return Path(f"{out_dir}.resume")


def fingerprint(cfg: dict, method: str, seed: int, step: int, start_digest: str,
                prev_state: Path, tensors: list[torch.Tensor], processes: int) -> str:
    """What a checkpoint must agree on to be resumed: everything that shapes the run."""
    h = hashlib.sha256()
    ident = Stage("train", cfg, **TRAIN_IGNORES).result_identity()  # not checkpoint_every
    h.update(json.dumps({**ident, "method": method, "seed": seed, "step": step,
                         "start": start_digest, "processes": processes},
                        sort_keys=True, default=str).encode())
    for f in sorted(prev_state.rglob("*")) if prev_state.exists() else []:
        if f.is_file():
            h.update(f.relative_to(prev_state).as_posix().encode())
            h.update(f.read_bytes())
    for t in tensors:  # the training data itself, whatever folder it came from
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def say(msg: str) -> None:
    print(f"cmcl train: {msg}", file=sys.stderr, flush=True)


# -- the method's in-task state ---------------------------------------------------------------
def snapshot(obj: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """(JSON tree, tensors) of an object's attributes; TypeError names what it cannot record."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(x: Any, where: str) -> Any:
        if x is None or isinstance(x, bool | int | float | str):
            return x
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, torch.Tensor | torch.Generator):
            key = f"t{len(tensors)}"
            is_gen = isinstance(x, torch.Generator)
            tensors[key] = x.get_state() if is_gen else x.detach().cpu().clone()
            return {"generator" if is_gen else "tensor": key}
        if isinstance(x, np.random.Generator):
            return {"numpy_generator": x.bit_generator.state}
        if isinstance(x, torch.device):
            return {"device": str(x)}
        if isinstance(x, torch.nn.Module):
            return {"module": enc(dict(x.state_dict()), where)}
        if isinstance(x, list | tuple):
            return {type(x).__name__: [enc(v, f"{where}[{i}]") for i, v in enumerate(x)]}
        if isinstance(x, dict):
            bad = [k for k in x if not isinstance(k, str | int)]
            if bad:
                raise TypeError(f"{where}: dict key {bad[0]!r} is neither str nor int")
            return {"dict": [[k, enc(v, f"{where}[{k!r}]")] for k, v in x.items()]}
        if hasattr(x, "__dict__") and not callable(x):
            return {"object": {"type": type(x).__qualname__,
                               "attrs": {k: enc(v, f"{where}.{k}") for k, v in vars(x).items()
                                         if where or k not in CONSTRUCTOR_ATTRS}}}
        raise TypeError(f"{where or type(obj).__name__}: cannot checkpoint a "
                        f"{type(x).__name__}; give the strategy task_state/load_task_state")

    return enc(obj, ""), tensors


def restore(live: Any, spec: Any, tensors: dict[str, torch.Tensor], where: str = "") -> Any:
    """The value `spec` describes, written into `live` in place wherever the shapes allow."""
    if not isinstance(spec, dict):
        return spec
    (kind, val), = spec.items()
    if kind == "tensor":
        saved = tensors[val]
        if isinstance(live, torch.Tensor) and (live.shape, live.dtype) == (saved.shape,
                                                                             saved.dtype):
            with torch.no_grad():
                live.copy_(saved)  # in place: optimizers and aliases keep this tensor
            return live
        if isinstance(live, torch.Tensor):
            return saved.to(live.device).requires_grad_(live.requires_grad)
        return saved
    if kind == "generator":
        gen = live if isinstance(live, torch.Generator) else torch.Generator()
        gen.set_state(tensors[val])
        return gen
    if kind == "numpy_generator":
        gen = live if isinstance(live, np.random.Generator) else \
            np.random.Generator(getattr(np.random, val["bit_generator"])())
        gen.bit_generator.state = val
        return gen
    if kind == "device":
        return torch.device(val)
    if kind == "module":
        if not isinstance(live, torch.nn.Module):
            raise ValueError(f"{where}: checkpoint holds a module, the live object {live!r}")
        live.load_state_dict(restore(None, val, tensors, where))
        return live
    if kind in ("list", "tuple"):
        same = isinstance(live, list | tuple) and len(live) == len(val)
        old = live if same else [None] * len(val)
        new = [restore(o, v, tensors, f"{where}[{i}]") for i, (o, v) in
               enumerate(zip(old, val, strict=True))]
        if kind == "tuple":
            return tuple(new)
        if isinstance(live, list):
            live[:] = new
            return live
        return new
    if kind == "dict":
        out = live if isinstance(live, dict) else {}
        new = {k: restore(out.get(k), v, tensors, f"{where}[{k!r}]") for k, v in val}
        out.clear()
        out.update(new)
        return out
    if kind == "object":
        if type(live).__qualname__ != val["type"]:
            raise ValueError(f"{where}: checkpoint holds a {val['type']}, the live object is a "
                             f"{type(live).__name__} (before_task did not rebuild it)")
        for k, v in val["attrs"].items():
            setattr(live, k, restore(getattr(live, k, None), v, tensors, f"{where}.{k}"))
        return live
    raise ValueError(f"{where}: unknown checkpoint entry '{kind}'")


# -- checkpoints on disk ----------------------------------------------------------------------
def save_checkpoint(acc: Any, root: Path, strategy: Any, loop: dict,
                    epoch_gen: torch.Tensor) -> None:
    """Write `root/ckpt-<step>` (all processes call this), then drop older checkpoints.

    Every process writes into the same `partial` folder (its RNG and strategy files); the main
    process renames it only when all have finished, so a kill at any moment leaves the
    previous checkpoint or the new one, never a half one under a ckpt- name.
    """
    partial, rank = root / "partial", acc.process_index
    if acc.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    acc.wait_for_everyone()
    acc.save_state(str(partial / "accelerate"))
    meta, tensors = strategy.task_state()
    save_tensors(partial / f"strategy_{rank}.safetensors", tensors)
    write_json(partial / f"strategy_{rank}.json", {"state": meta})
    acc.wait_for_everyone()
    if acc.is_main_process:
        save_tensors(partial / "loop.safetensors", {"epoch_generator": epoch_gen})
        write_json(partial / "loop.json", loop)  # last: its presence marks a full checkpoint
    acc.wait_for_everyone()
    if acc.is_main_process:
        final = root / f"ckpt-{loop['global_step']:09d}"
        partial.rename(final)
        for old in root.glob("ckpt-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def find_checkpoint(root: Path, fp: str, processes: int) -> Path | None:
    """The newest complete checkpoint of this exact run, or None (saying why one is unused)."""
    for ckpt in sorted(root.glob("ckpt-*"), reverse=True):
        try:
            loop = read_json(ckpt / "loop.json")
        except (FileNotFoundError, ValueError) as e:
            say(f"ignoring incomplete checkpoint {ckpt}: {e}")
            continue
        if loop.get("fingerprint") != fp:
            say(f"ignoring checkpoint {ckpt}: it was taken with other inputs or parameters "
                f"(fingerprint {loop.get('fingerprint')}, this run {fp})")
            continue
        acc_dir = ckpt / "accelerate"
        expected = {*ACCELERATE_FILES, *(f"random_states_{r}.pkl" for r in range(processes))}
        found = {f.name for f in acc_dir.iterdir()} if acc_dir.is_dir() else set()
        if found != expected:  # in particular no custom_checkpoint_*.pkl: never unpickled
            say(f"ignoring checkpoint {ckpt}: accelerate/ holds {sorted(found)}, expected "
                f"{sorted(expected)}")
            continue
        lost = [r for r in range(processes) if not (ckpt / f"strategy_{r}.json").is_file()]
        if lost:
            say(f"ignoring checkpoint {ckpt}: no strategy state of process(es) {lost}")
            continue
        return ckpt
    return None


def load_checkpoint(acc: Any, ckpt: Path, strategy: Any) -> tuple[dict, torch.Tensor]:
    """Put model, optimizer, RNGs and the method's state back; return (loop, epoch generator).

    Accelerate reads its optimizer and RNG files with torch.load(weights_only=True) (only
    tensors, numbers and numpy arrays can come back); its one pickle path, custom objects
    registered for checkpointing, is never used here and is refused if present.
    """
    if getattr(acc, "_custom_objects", None):
        raise RuntimeError("resume: objects registered for checkpointing would be unpickled")
    acc.load_state(str(ckpt / "accelerate"), load_kwargs={"weights_only": True})
    rank = acc.process_index
    meta = read_json(ckpt / f"strategy_{rank}.json")["state"]
    strategy.load_task_state(meta, load_tensors(ckpt / f"strategy_{rank}.safetensors"))
    loop = read_json(ckpt / "loop.json")
    return loop, load_tensors(ckpt / "loop.safetensors")["epoch_generator"]
