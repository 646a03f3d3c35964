"""params.yaml: load, validate against the JSON schema, and cross-check before any job runs.

Every error names the offending key (dotted path) and what was expected, so a typo in a params
file stops the workflow at start-up instead of failing a job an hour later.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA = Path(__file__).resolve().parents[2] / "pipeline" / "schemas" / "params.schema.yaml"


class ParamsError(ValueError):
    """A params file that cannot run; the message names the key."""


def _path(err: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "<top level>"


def _defaults(schema: Mapping, inst: Any, root: Mapping) -> None:
    """Fill schema defaults in place (jsonschema validates but never fills)."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].split("/")[-1]]
    if not isinstance(inst, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in inst and "default" in sub:
            inst[key] = copy.deepcopy(sub["default"])
        if key in inst:
            _defaults(sub, inst[key], root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, val in inst.items():
            if key not in schema.get("properties", {}):
                _defaults(extra, val, root)


def load_schema(path: str | Path = SCHEMA) -> dict:
    return yaml.safe_load(Path(path).read_text())


def check(params: Mapping, schema_path: str | Path = SCHEMA, source: str = "params") -> dict:
    """Validate and return a defaults-filled copy; raise ParamsError naming the bad key."""
    from cmcl.catalog import methods as catalog
    from cmcl.catalog import resolve_options
    from cmcl.corpora import task_class_problems
    from cmcl.encoders import ENCODERS

    schema = load_schema(schema_path)
    params = copy.deepcopy(dict(params))
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(params),
                    key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"  {_path(e)}: {e.message}" for e in errors[:10]]
        raise ParamsError(f"{source}: invalid parameters\n" + "\n".join(lines))
    _defaults(schema, params, schema)

    problems = []
    methods = catalog()
    for i, m in enumerate(params["train"]["methods"]):
        if m not in methods:
            problems.append(f"train.methods[{i}]: '{m}' is not a registered method "
                            f"({sorted(methods)})")
    for m, opts in params["methods"].items():
        if m not in methods:
            problems.append(f"methods.{m}: options for an unregistered method "
                            f"({sorted(methods)})")
            continue
        try:
            params["methods"][m] = resolve_options(methods[m], opts)
        except ValueError as e:
            problems.extend(line.strip() for line in str(e).splitlines()[1:])
    for name, t in params["tasks"].items():
        if t["corpus"] not in params["corpora"]:
            problems.append(f"tasks.{name}.corpus: '{t['corpus']}' is not declared under "
                            f"corpora ({sorted(params['corpora'])})")
        for m in t["modalities"]:
            if m not in params["embed"]["encoders"]:
                problems.append(f"tasks.{name}.modalities: no encoder for '{m}' in "
                                f"embed.encoders")
        if t["modalities"][0] == t["modalities"][1]:
            problems.append(f"tasks.{name}.modalities: a task pairs two different modalities")
    for seq, names in params["sequences"].items():
        for i, t in enumerate(names):
            if t not in params["tasks"]:
                problems.append(f"sequences.{seq}[{i}]: task '{t}' is not declared under tasks "
                                f"({sorted(params['tasks'])})")
        if len(set(names)) != len(names):
            problems.append(f"sequences.{seq}: a task appears twice")
    train_schema = schema["properties"]["train"]
    for m, o in params["overrides"].items():
        if m not in methods:
            problems.append(f"overrides.{m}: not a registered method ({sorted(methods)})")
        for key in ("methods", "seeds"):
            if key in o.get("train", {}):
                problems.append(f"overrides.{m}.train.{key}: the experiment matrix is global; "
                                "set it under train")
        merged = {**params["train"], **o.get("train", {})}
        for e in jsonschema.Draft202012Validator(train_schema).iter_errors(merged):
            problems.append(f"overrides.{m}.train.{_path(e)}: {e.message}")
    for name, c in params["corpora"].items():
        if not c.get("builtin") and not Path(c["path"]).is_dir():
            problems.append(f"corpora.{name}.path: folder '{c['path']}' does not exist "
                            "(and no `builtin` corpus is named to create it)")
    problems += task_class_problems(params)  # names -> indices; out-of-range refused
    for m, enc in params["embed"]["encoders"].items():
        if enc in ENCODERS and ENCODERS[enc].modality not in (m, "*"):
            problems.append(f"embed.encoders.{m}: encoder '{enc}' encodes "
                            f"'{ENCODERS[enc].modality}', not '{m}'")
    sw = params.get("sweep")
    if sw:
        if sw["method"] not in methods:
            problems.append(f"sweep.method: '{sw['method']}' is not a registered method")
        if sw["sequence"] is None:
            sw["sequence"] = next(iter(params["sequences"]))
        elif sw["sequence"] not in params["sequences"]:
            problems.append(f"sweep.sequence: '{sw['sequence']}' is not declared under "
                            f"sequences ({sorted(params['sequences'])})")
        for key, spec in sw["space"].items():
            if "." not in key and sw["method"] in methods and key not in \
                    methods[sw["method"]].options.get("properties", {}):
                problems.append(f"sweep.space.{key}: not an option of method '{sw['method']}' "
                                "(use a dotted path such as train.lr for other params)")
            over = params["overrides"].get(sw["method"], {}).get("train", {})
            if key.startswith("train.") and key[6:] in over:
                problems.append(f"sweep.space.{key}: overrides.{sw['method']}.{key} would "
                                "replace every sampled value")
            if spec["type"] != "categorical" and spec["low"] > spec["high"]:
                problems.append(f"sweep.space.{key}: low > high")
            if spec.get("log") and spec["type"] != "categorical" and spec["low"] <= 0:
                problems.append(f"sweep.space.{key}: a log scale needs low > 0")
    if problems:
        raise ParamsError(f"{source}: invalid parameters\n" + "\n".join(f"  {p}" for p in problems))
    return params


def load(path: str | Path, schema_path: str | Path = SCHEMA) -> dict:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at top level")
    return check(raw, schema_path, str(path))


def task_spec(params: Mapping, name: str) -> dict:
    """A task's settings plus its name: what shard/train/evaluate receive."""
    return {"name": name, **params["tasks"][name]}


def method_params(params: Mapping, method: str) -> dict:
    """model/loss/train as `method` trains with them: the shared sections plus its overrides."""
    over = params.get("overrides", {}).get(method, {}).get("train", {})
    return {"model": params["model"], "loss": params["loss"],
            "train": {**params["train"], **over}}


def step_task(params: Mapping, sequence: str, method: str, step: int) -> dict:
    """What training step `step` of `method` on `sequence` trains on: one task, or all of them
    for a joint method (its single step T over the union)."""
    from cmcl.catalog import methods

    names = params["sequences"][sequence]
    if methods()[method].joint:
        return {"name": "joint", "tasks": [task_spec(params, t) for t in names]}
    return task_spec(params, names[step - 1])
