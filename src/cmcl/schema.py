"""The params schema, the one place where defaults live; read once per process."""

from __future__ import annotations

import copy
import difflib
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

SCHEMA = Path(__file__).resolve().parents[2] / "pipeline" / "schemas" / "params.schema.yaml"


@functools.cache
def _cached(path: str) -> dict:
    return yaml.safe_load(Path(path).read_text())


def load_schema(path: str | Path = SCHEMA) -> dict:
    """The schema as a fresh dict (callers may change their copy)."""
    return copy.deepcopy(_cached(str(path)))


def defaults(section: str, entry: bool = False) -> dict:
    """The schema's default of every key of a top-level section that declares one (`entry`:
    of one entry of a named section, e.g. a corpus of `corpora`)."""
    sub = _cached(str(SCHEMA))["properties"][section]
    props = (sub["additionalProperties"] if entry else sub).get("properties", {})
    return {k: copy.deepcopy(v["default"]) for k, v in props.items() if "default" in v}


def fill_defaults(schema: Mapping, inst: Any, root: Mapping) -> None:
    """Fill schema defaults in place (jsonschema validates but never fills)."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].split("/")[-1]]
    if not isinstance(inst, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in inst and "default" in sub:
            inst[key] = copy.deepcopy(sub["default"])
        if key in inst:
            fill_defaults(sub, inst[key], root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, val in inst.items():
            if key not in schema.get("properties", {}):
                fill_defaults(extra, val, root)


def complete(cfg: dict) -> dict:
    """A job's config with the schema's defaults filled into the params sections it holds.

    Stage identities leave out keys at their neutral value (cmcl.stages), so what a rule
    passes may lack them; the job gets them back from here, not from defaults in its code."""
    schema = _cached(str(SCHEMA))
    out = copy.deepcopy(cfg)
    for key, value in out.items():
        sub = schema["properties"].get(key)
        if sub is not None and isinstance(value, dict):
            fill_defaults(sub, value, schema)
    return out


def message(err: Any) -> str:
    """A jsonschema error's message; a misspelt key also gets the closest allowed one."""
    if err.validator != "additionalProperties" or not isinstance(err.instance, dict):
        return err.message
    allowed = list(err.schema.get("properties", {}))
    close = {k: m[0] for k in err.instance if k not in allowed
             and (m := difflib.get_close_matches(k, allowed, n=1, cutoff=0.7))}
    if not close:
        return err.message
    if len(close) == 1:
        return err.message + f" (did you mean '{next(iter(close.values()))}'?)"
    return err.message + " (did you mean " + ", ".join(
        f"'{m}' for '{k}'" for k, m in close.items()) + "?)"
