"""Reading and merging params files: the layer both cmcl.config and cmcl.tuning stand on.

Apart from cmcl.config so that the tuned-file code can read and merge YAML the same way without
importing the validation it is called from (no import cycle).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

import yaml


class ParamsError(ValueError):
    """A params file that cannot run; the message names the key."""


class UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {first[key] + 1}): "
                        "YAML would keep the last value silently; remove one",
                        key_node.start_mark)
                first[key] = key_node.start_mark.line
            except TypeError:  # an unhashable key: construct_mapping names it
                pass
        return super().construct_mapping(node, deep)


def read_params(path: str | Path) -> dict:
    """One params file's top-level mapping; errors name the file (and line and column)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise ParamsError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at line "
                          f"{line}); save the file as UTF-8") from None
    try:
        raw = yaml.load(text, UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{at}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at top level")
    return raw


def deep_merge(base: Mapping, over: Mapping) -> dict:
    """Snakemake's --configfile merge: mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
