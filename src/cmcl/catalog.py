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
from dataclasses import asdict, dataclass, field
from pathlib import Path

STRATEGIES = Path(__file__).resolve().parent / "strategies"


@dataclass(frozen=True)
class MethodInfo:
    name: str
    description: str
    citation: str
    options: dict  # JSON schema fragment: {"properties": {...}, "required": [...]}
    joint: bool
    first_step_ignores: tuple[str, ...]
    space: dict | None = None  # the tuning search space (None: undeclared)
    budget: dict = field(default_factory=dict)  # option -> "samples" | "per_task"

    def schema(self) -> dict:
        return {"type": "object", "additionalProperties": False, **self.options}


def cache_dir() -> Path:
    base = os.environ.get("CMCL_CACHE_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cmcl"
    return Path(base)


def sources_key() -> str:
    """Content hash of every strategy module (and this file): any edit invalidates the cache."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    for f in sorted(STRATEGIES.glob("*.py")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:20]


def from_registry() -> dict[str, MethodInfo]:
    """Import every strategy (torch included) and read their class attributes."""
    from cmcl.strategies import discover

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


def resolve_options(info: MethodInfo, given: dict, where: str | None = None) -> dict:
    """Fill a method's option defaults and validate the result against its schema.

    Validating the filled options lets the schema's cross-field rules (`allOf` of if/then, e.g.
    a threshold's range per `threshold_mode`) see defaulted values too; a rule's "$comment"
    says why in the message.
    """
    import jsonschema

    where = where or f"methods.{info.name}"
    out = dict(given) if isinstance(given, dict) else given
    if isinstance(out, dict):
        for key, sub in info.options.get("properties", {}).items():
            if key not in out and "default" in sub:
                out[key] = sub["default"]
    errors = list(jsonschema.Draft202012Validator(info.schema()).iter_errors(out))
    if errors:
        lines = [f"  {'.'.join([where, *map(str, e.absolute_path)])}: {e.message}"
                 + (f" ({e.schema['$comment']})" if isinstance(e.schema, dict)
                    and "$comment" in e.schema else "")
                 for e in errors]
        raise ValueError("invalid method options\n" + "\n".join(lines))
    return out
