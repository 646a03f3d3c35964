"""Atomic writes and safe loads: an interrupted job must never leave a complete-looking file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in the target's folder; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; results are shared
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside `path`; it replaces `path` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    """safetensors, never pickle: checkpoints are data, not code."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                  metadata=metadata)


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: tensor file not found")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise ValueError(f"{path}: not a valid safetensors file ({e})") from None


# -- integrity: producers record the sha256 of every file they write; loads check it ----------
# Cost: sha256 runs at about 2 GB/s, each file is hashed once per load (from the bytes or mmap
# being read): a d = 1024 step (3 heads 1024x1024 + DNS subspace state, 63 MB) takes 32 ms to
# check, against about a minute to train one paper-scale task.
DIGESTS = "sha256"  # meta.json key: {path relative to the artifact folder: sha256 hex}


class DamagedArtifact(ValueError):
    """A file whose bytes differ from what its producer recorded (bit rot, a bad copy)."""


def sha256_bytes(data) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def record_digests(folder: str | os.PathLike, skip: tuple[str, ...] = ("meta.json",)
                   ) -> dict[str, str]:
    """sha256 of every file under `folder` (a producer's temp folder, before its meta.json)."""
    folder = Path(folder)
    return {f.relative_to(folder).as_posix(): sha256_file(f)
            for f in sorted(folder.rglob("*"))
            if f.is_file() and f.relative_to(folder).as_posix() not in skip}


def repair_hint(path: str | os.PathLike) -> str:
    """How to get a good copy back: from DVC's cache when the out is cached, else rerun."""
    path = Path(path)
    artifact = path.parent if path.parent.name != "state" else path.parent.parent
    # naming the folder: plain `snakemake` rebuilds no missing folder whose dependants exist
    rerun = (f"delete {artifact} and run `snakemake --cores all {artifact}` (it rebuilds that "
             "folder; the next `snakemake` reruns what depends on it)")
    try:
        import yaml

        stages = yaml.safe_load(Path("dvc.yaml").read_text()).get("stages", {})
        outs = [(o if isinstance(o, str) else next(iter(o)),
                 {} if isinstance(o, str) else next(iter(o.values())) or {})
                for st in stages.values() for o in st.get("outs", [])]
    except (OSError, ValueError, AttributeError, TypeError):
        outs = []
    for out, opts in outs:
        inside = path.resolve().is_relative_to(Path(out).resolve())
        if inside and opts.get("cache", True):
            return f"`dvc checkout {out}` (restores it from the DVC cache) or {rerun}"
    return rerun


def check_digest(path: str | os.PathLike, expected: str | None, found: str) -> None:
    """Stop naming the file and both digests; nothing to compare when none was recorded."""
    if expected is not None and expected != found:
        raise DamagedArtifact(f"{path}: damaged: sha256 {found}, but its producer recorded "
                              f"{expected}; repair: {repair_hint(path)}; `python -m cmcl "
                              "verify` lists every damaged artifact")


def recorded_digest(meta: Mapping, name: str) -> str | None:
    """The digest `meta` (the folder's meta.json) records for `name`; None for older folders."""
    return (meta.get(DIGESTS) or {}).get(name)


def verify_files(folder: str | os.PathLike, meta: Mapping, under: str = "") -> None:
    """Check every file recorded under `under` (e.g. "state/") of an artifact folder."""
    folder = Path(folder)
    for name, expected in sorted((meta.get(DIGESTS) or {}).items()):
        if name.startswith(under):
            path = folder / name
            if not path.is_file():
                raise DamagedArtifact(f"{path}: missing, but its producer recorded it; "
                                      f"repair: {repair_hint(path)}")
            check_digest(path, expected, sha256_file(path))


def load_tensors_digest(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """load_tensors plus the sha256 of the same bytes (one read, one hash)."""
    from safetensors.torch import load

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: tensor file not found") from None
    try:
        tensors = load(data)
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise ValueError(f"{path}: not a valid safetensors file ({e})") from None
    return tensors, sha256_bytes(data)
