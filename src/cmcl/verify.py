"""`python -m cmcl verify`: find artifacts whose files differ from what their producer recorded.

Every producer (shard, embed, import-features, init, train) writes the sha256 of each file it
wrote into its folder's meta.json (key `sha256`); loads check them as they read (cmcl.io). This
walks folders and checks everything at once, so damage shows before a job trips over it, with
the repair for each artifact: `dvc checkout <out>` where DVC caches the out, else delete the
folder and rerun Snakemake, which rebuilds it and everything downstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cmcl.io import DIGESTS, load_tensors, read_json, repair_hint, sha256_file
from cmcl.steps import weights_digest

DEFAULT_ROOTS = ("data/shards", "data/features", "results/runs")


@dataclass
class Report:
    artifacts: int = 0
    files: int = 0
    damaged: list[str] = field(default_factory=list)  # one line per damaged file
    repairs: dict[str, str] = field(default_factory=dict)  # artifact folder -> how to repair
    unrecorded: list[str] = field(default_factory=list)  # folders from before digests


def artifact_folders(path: Path) -> list[Path]:
    """Folders holding a meta.json at or under `path` (a file: its enclosing artifact)."""
    if path.is_file():
        for parent in path.parents:
            if (parent / "meta.json").is_file():
                return [parent]
        return []
    found = [m.parent for m in sorted(path.rglob("meta.json"))]
    # temp folders of running jobs and preemption checkpoints are not artifacts
    return [f for f in found if not any(p.startswith(".") or p.endswith(".resume")
                                        for p in f.relative_to(path).parts)]


def _legacy_step(folder: Path, meta: dict, rep: Report) -> bool:
    """A step written before digests: its weights digest still checks model.safetensors."""
    expected = meta.get("log", {}).get("final_digest")
    if not expected or not (folder / "model.safetensors").is_file():
        return False

    try:
        found = weights_digest(_Holder(load_tensors(folder / "model.safetensors")))
    except ValueError as e:
        rep.damaged.append(str(e))
        rep.repairs[str(folder)] = repair_hint(folder / "model.safetensors")
        return True
    rep.files += 1
    if found != expected:
        rep.damaged.append(f"{folder / 'model.safetensors'}: weights digest {found}, but the "
                           f"step recorded {expected}")
        rep.repairs[str(folder)] = repair_hint(folder / "model.safetensors")
    return True


class _Holder:
    """What weights_digest reads (state_dict) for a bare tensor dict."""

    def __init__(self, tensors: dict) -> None:
        self.tensors = tensors

    def state_dict(self) -> dict:
        return self.tensors


def verify(paths: list[str | Path]) -> Report:
    """Check every recorded digest of the artifacts at or under `paths`."""
    rep = Report()
    for root in map(Path, paths):
        if not root.exists():
            rep.damaged.append(f"{root}: does not exist")
            continue
        for folder in artifact_folders(root):
            try:
                meta = read_json(folder / "meta.json")
            except ValueError as e:
                rep.damaged.append(str(e))
                rep.repairs[str(folder)] = repair_hint(folder / "meta.json")
                continue
            rep.artifacts += 1
            digests = meta.get(DIGESTS) if isinstance(meta, dict) else None
            if not digests:
                if not _legacy_step(folder, meta if isinstance(meta, dict) else {}, rep):
                    rep.unrecorded.append(str(folder))
                continue
            for name, expected in sorted(digests.items()):
                path = folder / name
                rep.files += 1
                if not path.is_file():
                    rep.damaged.append(f"{path}: missing (its producer recorded sha256 "
                                       f"{expected})")
                else:
                    found = sha256_file(path)
                    if found == expected:
                        continue
                    rep.damaged.append(f"{path}: sha256 {found}, recorded {expected}")
                rep.repairs[str(folder)] = repair_hint(path)
    return rep


def render(rep: Report) -> str:
    lines = [f"DAMAGED {d}" for d in rep.damaged]
    if rep.repairs:
        lines.append("repair:")
        lines += [f"  {folder}: {how}" for folder, how in rep.repairs.items()]
    if rep.unrecorded:
        lines.append(f"{len(rep.unrecorded)} artifact(s) without recorded digests (written "
                     f"before cmcl recorded them; rerun to protect them), e.g. "
                     f"{rep.unrecorded[0]}")
    state = f"{len(rep.damaged)} damaged file(s)" if rep.damaged else "no damage"
    lines.append(f"verify: {rep.artifacts} artifact(s), {rep.files} file(s) checked: {state}")
    return "\n".join(lines)
