"""Which methods exist and which options they take, answered without importing torch.

Snakemake parses the Snakefile at start-up and again inside every cluster job; the strategy
modules import torch (≈2 s). The catalog is the registry's metadata (names, option schemas,
`joint`, `first_step_ignores`) cached as JSON under a key made of the strategy sources, so it is
rebuilt from the real registry whenever a method file changes and read in milliseconds otherwise.
A new method is still one new file in cmcl/strategies/.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

from cmcl.method_info import MethodInfo, resolve_options  # noqa: F401  (re-exported)

STRATEGIES = Path(__file__).resolve().parent / "strategies"


def cache_dir() -> Path:
    base = os.environ.get("CMCL_CACHE_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cmcl"
    return Path(base)


def sources_key() -> str:
    """Content hash of every strategy module, shared bases included, and of the metadata
    code: any edit invalidates the cache."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    here = Path(__file__).parent
    for f in sorted([*STRATEGIES.rglob("*.py"), here / "method_info.py"]):
        h.update(f.relative_to(here).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:20]


def from_registry() -> dict[str, MethodInfo]:
    """Import every strategy (torch included) and read their class attributes."""
    from cmcl.strategies import discover  # here: torch costs ~2 s, the cached read none

    # through JSON, so a fresh build and a cached read are the same objects (lists, not tuples)
    return {n: MethodInfo(n, c.description, c.citation, json.loads(json.dumps(c.options)),
                          c.joint, tuple(c.first_step_ignores),
                          json.loads(json.dumps(c.space)), dict(c.budget))
            for n, c in sorted(discover().items())}


_MEMO: dict[str, dict[str, MethodInfo]] = {}


def methods() -> dict[str, MethodInfo]:
    """Every registered method's metadata, from the cache when the sources are unchanged."""
    key = sources_key()
    if key in _MEMO:
        return _MEMO[key]
    path = cache_dir() / f"methods-{key}.json"
    try:
        raw = json.loads(path.read_text())
        found = {n: MethodInfo(**{**v, "first_step_ignores": tuple(v["first_step_ignores"])})
                 for n, v in raw.items()}
    except (OSError, ValueError, TypeError, KeyError):
        found = from_registry()
        try:  # a read-only home only costs the torch import next time
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps({n: asdict(i) for n, i in found.items()}, sort_keys=True))
            os.replace(tmp, path)
        except OSError:
            pass
    _MEMO[key] = found
    return found
