"""params.yaml: load, validate against the JSON schema, and cross-check before any job runs.

Every error names the offending key (dotted path) and what was expected, so a typo in a params
file stops the workflow at start-up instead of failing a job an hour later.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import jsonschema

from cmcl.catalog import methods as catalog
from cmcl.catalog import resolve_options
from cmcl.corpora import (
    adapter_names,
    adapter_option_problems,
    task_class_problems,
    task_modality_problems,
)
from cmcl.encoders import ENCODERS, spec_problems
from cmcl.params_file import ParamsError, deep_merge, read_params
from cmcl.schema import SCHEMA, fill_defaults, load_schema, message  # noqa: F401  (SCHEMA re-exported)
from cmcl.tuning import apply_budget, merge_tuned, tune_problems


def _path(err: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "<top level>"


def check(params: Mapping, schema_path: str | Path = SCHEMA, source: str = "params") -> dict:
    """Validate and return a defaults-filled copy; raise ParamsError naming the bad key."""

    schema = load_schema(schema_path)
    try:  # the tuned file's methods/overrides, under the params' own values
        params = merge_tuned(params)
    except ValueError as e:
        raise ParamsError(f"{source}: invalid parameters\n  {e}") from None
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(params),
                    key=lambda e: list(map(str, e.absolute_path)))
    lines = [f"{_path(e)}: {message(e)}" for e in errors[:10]]
    try:
        lines += _problems(params, schema)
    except (KeyError, TypeError, AttributeError, ValueError):
        if not errors:
            raise
        # too malformed for the cross-field checks: the schema's messages say where
    if lines:
        raise ParamsError(f"{source}: invalid parameters\n" + "\n".join(f"  {x}" for x in lines))
    return params


def _problems(params: dict, schema: Mapping) -> list[str]:
    """Fill presets and defaults into `params` in place; what breaks a rule across keys (or
    needs the method catalog, the adapters or the files) as one message each."""
    params["train"] = expand_preset(params["train"])
    train_defaults = {k: v.get("default")
                      for k, v in schema["properties"]["train"]["properties"].items()}
    for sect in (*params.get("overrides", {}).values(), *params.get("variants", {}).values()):
        if "train" in sect:
            sect["train"] = expand_preset(sect["train"], train_defaults)
    fill_defaults(schema, params, schema)
    problems = []
    methods = catalog()
    problems += apply_budget(params, methods)  # storing methods get their budget option
    variants = params["variants"]
    runs = {**methods, **{v: methods.get(spec["method"]) for v, spec in variants.items()}}
    for i, m in enumerate(params["train"]["methods"]):
        if m not in runs:
            problems.append(f"train.methods[{i}]: '{m}' is not a registered method "
                            f"({sorted(methods)}) or variant ({sorted(variants)})")
    problems += _warmup_problems("train", params["train"])
    # every method's options complete (its schema's defaults), given or not: a job's params and
    # a run's fingerprint then change when a default does, instead of keeping stale results
    params["methods"] = {**{m: {} for m in methods}, **params["methods"]}
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
    for v, spec in variants.items():
        where = f"variants.{v}"
        if v in methods:
            problems.append(f"{where}: '{v}' is a registered method; name the variant otherwise")
        if spec["method"] not in methods:
            problems.append(f"{where}.method: '{spec['method']}' is not a registered method "
                            f"({sorted(methods)})")
            continue
        base_opts = params["methods"].get(spec["method"], {})
        spec["given"] = dict(spec["options"])  # what the variant itself sets (for the report)
        try:
            spec["options"] = resolve_options(methods[spec["method"]],
                                              {**base_opts, **spec["options"]},
                                              f"{where}.options")
        except ValueError as e:
            problems.extend(line.strip() for line in str(e).splitlines()[1:])
        for key in ("methods", "seeds"):
            if key in spec["train"]:
                problems.append(f"{where}.train.{key}: the experiment matrix is global; "
                                "set it under train")
        merged = {**params["train"], **spec["train"]}
        for e in jsonschema.Draft202012Validator(train_schema).iter_errors(merged):
            problems.append(f"{where}.train.{_path(e)}: {message(e)}")
        problems += _warmup_problems(f"{where}.train", merged)
    for m, o in params["overrides"].items():
        if m not in runs:
            problems.append(f"overrides.{m}: not a registered method ({sorted(methods)}) "
                            f"or variant ({sorted(variants)})")
        for key in ("methods", "seeds"):
            if key in o.get("train", {}):
                problems.append(f"overrides.{m}.train.{key}: the experiment matrix is global; "
                                "set it under train")
        merged = {**params["train"], **variants.get(m, {}).get("train", {}), **o.get("train", {})}
        for e in jsonschema.Draft202012Validator(train_schema).iter_errors(merged):
            problems.append(f"overrides.{m}.train.{_path(e)}: {message(e)}")
        problems += _warmup_problems(f"overrides.{m}.train", merged)
    # only a corpus some sequence's task reads must exist (cutting a paper chain to a few
    # tasks leaves the others' folders out)
    used = {params["tasks"][t]["corpus"] for names in params["sequences"].values()
            for t in names if t in params["tasks"]}
    adapters = adapter_names()
    for name, c in params["corpora"].items():
        if c["adapter"] not in adapters:
            problems.append(f"corpora.{name}.adapter: '{c['adapter']}' is not a corpus adapter "
                            f"({adapters}); an adapter is a module of cmcl/corpora declaring "
                            "@register_adapter(\"<name>\")")
        if not c.get("builtin") and not Path(c["path"]).is_dir() and name in used:
            problems.append(f"corpora.{name}.path: folder '{c['path']}' does not exist "
                            "(and no `builtin` corpus is named to create it)")
    problems += task_class_problems(params)  # names -> indices; out-of-range refused
    problems += task_modality_problems(params)
    problems += adapter_option_problems(params)
    users: dict[str, list[str]] = {}  # one message per spec, however many modalities share it
    for m, enc in params["embed"]["encoders"].items():
        users.setdefault(enc, []).append(m)
    for enc, mods in users.items():
        problems += spec_problems(f"embed.encoders.{'/'.join(mods)}", enc)
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
            if spec["type"] != "categorical" and spec["low"] > spec["high"]:
                problems.append(f"sweep.space.{key}: low > high")
            if spec.get("log") and spec["type"] != "categorical" and spec["low"] <= 0:
                problems.append(f"sweep.space.{key}: a log scale needs low > 0")
    problems += tune_problems(params, methods)
    names = metric_names(params)
    for where, section in (("report.main_metric", params["report"]),
                           ("sweep.objective.metric", (sw or {}).get("objective")),
                           ("tune.objective.metric", params.get("tune", {}).get("objective"))):
        metric = (section or {}).get("main_metric" if where.startswith("report") else "metric")
        if metric is not None and metric not in names:
            problems.append(f"{where}: '{metric}' is not a score the evaluation writes "
                            f"({names}: R@k for each k of eval.ks)")
    return problems


# train presets: values filled in for the keys a train section does not give
TRAIN_PRESETS = {
    # the Hugging Face Trainer's defaults, which the DNS authors' training.py runs under
    "paper": {"lr_schedule": "linear", "warmup_steps": 0, "decay_biases": False,
              "drop_last": False},
    "default": {},
}


def expand_preset(train: Mapping, defaults: Mapping | None = None) -> dict:
    """A train section with its preset's values for the keys it does not set itself.

    The shared section (`defaults` None) gets the preset's keys; schema defaults fill the rest
    later. An override or variant section that names a preset gets every preset-controlled key
    it does not set (the preset's value, or the schema default for `preset: default`), so it
    can switch presets by itself; one that names none inherits the shared section's keys.
    """
    out = dict(train)
    preset = TRAIN_PRESETS.get(out.get("preset", "default"), {})
    if defaults is None:
        for key, value in preset.items():
            out.setdefault(key, value)
    elif "preset" in out:
        for key in {k for p in TRAIN_PRESETS.values() for k in p}:
            out.setdefault(key, preset.get(key, defaults.get(key)))
    return out


def _warmup_problems(where: str, train: Mapping) -> list[str]:
    if train.get("warmup_steps") and train.get("warmup_fraction"):
        return [f"{where}: give warmup_steps or warmup_fraction, not both"]
    return []


def metric_names(params_or_eval: Mapping) -> list[str]:
    """Per-task scores the evaluation writes, in report order: R@k for each `eval.ks`."""
    ec = params_or_eval.get("eval", params_or_eval)
    return ["map", *(f"r{k}" for k in ec["ks"]), "zs_acc"]


def compose(files: list[str | Path], default_base: str | Path = "params.yaml",
            extra: Mapping | None = None) -> dict:
    """The configuration that `snakemake --configfile f1 f2 ...` runs, honouring `extends`.

    The files are merged, in order, over a base: the base the last file declaring `extends`
    names (null: none, so a complete file such as a paper setting runs exactly as written),
    else `default_base` (Snakemake's behaviour). A base is composed the same way, to the root
    of its chain: a file whose `extends` is null, or one with no `extends` (merged over
    `default_base`, as it would be given alone), or `default_base` itself. An `extends` path is
    relative to the working directory, else (not there) to the folder of the file declaring
    it; a cycle is an error naming its files. `extra` (Snakemake's --config) is merged last.
    """
    return compose_noting(files, default_base, extra)[0]


MERGED_SECTIONS = ("corpora", "tasks", "sequences")  # declarations a file may redefine


def _extends_path(value: object, declared_in: str | Path) -> Path:
    """An `extends` value as a file: from the working directory (as pipeline/params/*.yaml
    spell it), else beside the file declaring it (a chain kept together in one folder)."""
    if not isinstance(value, str) or not value:
        raise ParamsError(f"{declared_in}: extends: expected a params file's path or null, "
                          f"got {value!r}")
    path = Path(value)
    if path.is_absolute() or path.exists():
        return path
    beside = Path(declared_in).parent / path
    if beside.exists():
        return beside
    raise ParamsError(f"{declared_in}: extends: '{value}' does not exist (looked in the "
                      f"working directory and in {Path(declared_in).parent}/)")


def _same(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _base_of(files: list[str | Path], layers: list[dict],
             default_base: str | Path) -> list[tuple[Path, dict]]:
    """What the files merge over, root first: the chain of the last `extends`, else of
    default_base (none if it does not exist: a lone complete file outside the project)."""
    declared = [(f, layer["extends"]) for f, layer in zip(files, layers, strict=True)
                if "extends" in layer]
    if declared:
        origin, value = declared[-1]
        if value is None:
            return []
        current: Path | None = _extends_path(value, origin)
        trail = [Path(origin)]  # the declaring file: a chain back to it is a cycle
    else:
        current = Path(default_base) if Path(default_base).exists() else None
        trail = []
    chain: list[tuple[Path, dict]] = []
    while current is not None:
        if any(_same(current, seen) for seen in trail):
            names = " -> ".join(map(str, [*trail, current]))
            raise ParamsError(f"extends: a cycle ({names}); end the chain with `extends: null` "
                              "or a file without `extends`")
        trail.append(current)
        layer = read_params(current)
        chain.append((current, layer))
        if "extends" in layer:
            value = layer["extends"]
            current = None if value is None else _extends_path(value, current)
        elif Path(default_base).exists() and not _same(current, default_base):
            current = Path(default_base)  # merged over params.yaml, as given alone
        else:
            current = None
    return chain[::-1]


def sources(files: list[str | Path], default_base: str | Path = "params.yaml") -> str:
    """The files a composed configuration came from, root first (for error messages)."""
    if not files:
        return str(default_base)
    base = _base_of(files, [read_params(f) for f in files], default_base)
    return " + ".join(map(str, [*(path for path, _ in base), *files]))


def compose_noting(files: list[str | Path], default_base: str | Path = "params.yaml",
                   extra: Mapping | None = None) -> tuple[dict, str | None]:
    """compose, plus a notice naming every declaration a file merges into (None: none).

    A task, corpus or sequence that a file declares again is merged key by key (a sequence is
    replaced), silently in Snakemake; the notice says which, so a reused name is a choice.
    """
    layers = [read_params(f) for f in files]
    out: dict = {}
    declared_by: dict[tuple[str, str], str | Path] = {}  # the last file declaring each name
    merged: list[tuple[str, str | Path]] = []  # (what, by which file), declared before where
    for f, layer in [*_base_of(files, layers, default_base), *zip(files, layers, strict=True)]:
        for sect in MERGED_SECTIONS:
            given = layer.get(sect)
            for name in given if isinstance(given, Mapping) else ():
                before = declared_by.get((sect, name))
                if before is not None and not _same(before, f):  # a file again: no news
                    how = "replaced" if sect == "sequences" else "merged key by key"
                    merged.append((f"{sect}.{name} ({how}, by {f}", before))
                declared_by[(sect, name)] = f
        out = deep_merge(out, layer)
    out = deep_merge(out, extra or {})
    out.pop("extends", None)
    note = None
    if merged:
        earlier = {str(before) for _, before in merged}
        what = (", ".join(f"{w})" for w, _ in merged) + f" already declared in {earlier.pop()}"
                if len(earlier) == 1 else ", ".join(f"{w} over {b})" for w, b in merged))
        note = (f"cmcl: notice: {what}: keys a file does not set keep their earlier values; "
                "use a new name for a new declaration, or `extends: null` to run the file alone")
    return out, note


def load(path: str | Path, schema_path: str | Path = SCHEMA, as_configfile: bool = False) -> dict:
    """A params file, validated by itself; `as_configfile`: as `snakemake --configfile path`
    runs it (merged over params.yaml unless it says `extends`), which the CLI verbs use."""
    raw = compose([path]) if as_configfile else read_params(path)
    raw.pop("extends", None)
    return check(raw, schema_path, str(path))
