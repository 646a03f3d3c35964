"""The tuning matrix: one Optuna study per (sequence, method), every method with the same budget.

Torch-free (the Snakefile and `config.check` use it): search spaces come from the method files
through the catalog, the shared memory budget is turned into each method's own option, and a
tuned file (the reviewed export of the studies) is merged under params.yaml's own values.
The trials themselves run in cmcl.sweep (`sweep-worker`/`sweep-best` verbs).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from cmcl.catalog import methods as catalog_methods
from cmcl.params_file import ParamsError, deep_merge, read_params

# keys of a tuned file that are params; `record` says how the values were obtained
TUNED_SECTIONS = ("methods", "overrides")


# -- the tuned file -------------------------------------------------------------------------
def read_tuned(path: str | Path) -> dict:
    """A tuned file's mapping; errors name the file (start-up must not fail in a job)."""
    path = Path(path)
    try:  # as a params file: duplicate keys, bad bytes and YAML errors named with their line
        raw = read_params(path)
    except ParamsError as e:
        raise ValueError(f"tuned: {e}") from None
    if not isinstance(raw, dict) or set(raw) - {*TUNED_SECTIONS, "record"}:
        raise ValueError(f"tuned: '{path}' must hold only {list(TUNED_SECTIONS)} and record")
    return raw


def merge_tuned(params: Mapping) -> dict:
    """params with the tuned file's methods/overrides merged *under* its own: a value that
    params.yaml (or a --configfile) sets itself wins over the tuned one."""
    out = copy.deepcopy(dict(params))
    path = out.get("tuned")
    if not path:
        return out
    tuned = read_tuned(path)
    for sect in TUNED_SECTIONS:
        out[sect] = deep_merge(tuned.get(sect) or {}, out.get(sect) or {})
    return out


# -- the memory budget ------------------------------------------------------------------------
def budget_value(params: Mapping, kind: str) -> int | None:
    """A method's share of budget.samples: the whole buffer, or per task of the longest
    sequence (so no method ever holds more samples than the budget)."""
    samples = (params.get("budget") or {}).get("samples")
    if samples is None:
        return None
    if kind == "per_task":
        return max(1, samples // max(len(s) for s in params["sequences"].values()))
    return int(samples)


def apply_budget(params: dict, catalog: Mapping) -> list[str]:
    """Fill each storing method's budget option (unless params set it); return problems."""
    problems = []
    for name, info in catalog.items():
        for option, kind in (info.budget or {}).items():
            value = budget_value(params, kind)
            if value is None:
                continue
            opts = params.setdefault("methods", {}).setdefault(name, {})
            given = opts.setdefault(option, value)
            if given != value and name in params["train"]["methods"]:
                problems.append(f"methods.{name}.{option}: {given} is not the shared budget "
                                f"({value} from budget.samples {params['budget']['samples']}); "
                                "remove it or change budget.samples")
    return problems


# -- the matrix of studies ----------------------------------------------------------------------
def tune_matrix(params: Mapping) -> list[tuple[str, str]]:
    """(sequence, method) pairs with a study: tune.sequences x tune.methods (null: all)."""
    tc = params.get("tune") or {}
    seqs = tc.get("sequences") or list(params["sequences"])
    methods = tc.get("methods") or [m for m in params["train"]["methods"]
                                    if m not in params.get("variants", {})]
    return [(s, m) for s in seqs for m in methods]


def method_space(params: Mapping, method: str, catalog: Mapping | None = None) -> dict | None:
    """The method's search space: tune.spaces.<method> if given, else its file's own."""
    if catalog is None:

        catalog = catalog_methods()
    given = ((params.get("tune") or {}).get("spaces") or {}).get(method)
    return copy.deepcopy(given if given is not None else catalog[method].space)


def tune_problems(params: Mapping, catalog: Mapping) -> list[str]:
    """Start-up checks of the tune section (names, spaces that can be sampled)."""
    tc = params.get("tune")
    if not tc:
        return []
    problems = []
    for s in tc.get("sequences") or []:
        if s not in params["sequences"]:
            problems.append(f"tune.sequences: '{s}' is not declared under sequences")
    for m in [*(tc.get("methods") or []), *(tc.get("spaces") or {})]:
        if m not in catalog:
            problems.append(f"tune: '{m}' is not a registered method ({sorted(catalog)}); "
                            "variants are not tuned")
    if problems:
        return problems
    for _, m in dict.fromkeys(tune_matrix(params)):
        if m not in catalog:
            continue
        space = method_space(params, m, catalog)
        where = f"tune.spaces.{m}" if m in (tc.get("spaces") or {}) else f"space of method '{m}'"
        if not space:
            problems.append(f"{where}: none declared (a method with nothing to tune declares "
                            "{'train.lr': LR})")
            continue
        props = catalog[m].options.get("properties", {})
        for key, spec in space.items():
            if "." not in key and key not in props:
                problems.append(f"{where}.{key}: not an option of method '{m}'")
            elif "." in key and not key.startswith("train."):
                problems.append(f"{where}.{key}: only method options and train.* are tuned")
            if spec.get("type") != "categorical" and spec["low"] > spec["high"]:
                problems.append(f"{where}.{key}: low > high")
    return problems


def _without(mapping: Mapping, keys) -> dict:
    return {k: v for k, v in mapping.items() if k not in keys}


def tune_cfg(params: Mapping, sequence: str, method: str, space: Mapping | None = None) -> dict:
    """What the study of (sequence, method) reads: params reduced to that sequence's tasks and
    that method's options and overrides, minus the values its own space sets (so adopting a
    tuned file neither restarts the study nor fixes what the trials sample), plus a `sweep`
    section the sweep verbs run."""
    tc = params["tune"]
    space = method_space(params, method) if space is None else dict(space)
    opt_keys = {k for k in space if "." not in k}
    train_keys = {k[6:] for k in space if k.startswith("train.")}
    names = params["sequences"][sequence]
    over = dict(params.get("overrides", {}).get(method, {}))
    if "train" in over:
        over["train"] = _without(over["train"], train_keys)
        if not over["train"]:  # only swept keys: as if never given
            del over["train"]
    # validated params hold every method's options with their defaults filled (config.check),
    # so options given (a tuned file) and options left to their defaults name the same study
    opts = dict(params.get("methods", {}).get(method, {}))
    cfg = {
        "tasks": {t: params["tasks"][t] for t in names},
        "sequences": {sequence: list(names)},
        **{k: params[k] for k in ("corpora", "shard", "embed", "model", "loss", "eval")
           if k in params},
        "train": {**params["train"], "methods": [method], "seeds": params["train"]["seeds"][:1]},
        "methods": {method: _without(opts, opt_keys)},
        "overrides": {method: over} if over else {},
        "budget": params.get("budget"),
        "sweep": {"study": f"tune-{sequence}-{method}", "method": method, "sequence": sequence,
                  "storage": tc.get("storage"), "n_trials": tc["n_trials"],
                  "n_workers": tc["n_workers"], "n_startup_trials": tc["n_startup_trials"],
                  "seed": tc["seed"], "val_fraction": tc["val_fraction"],
                  "objective": tc["objective"], "space": space, "baseline": True},
    }
    return cfg


def study_dir(sequence: str, method: str) -> str:
    return f"results/tune/{sequence}/{method}"


# -- export ---------------------------------------------------------------------------------------
def override_of(method: str, assignment: Mapping) -> dict:
    """A study's best assignment as params: options under methods.<m>, train keys under
    overrides.<m>.train (the shared train section stays every other method's); another dotted
    key (a sweep's loss.temperature) at its own path, which no section holds per method."""
    out: dict = {}
    for key, value in assignment.items():
        path = (["overrides", method, "train", key[6:]] if key.startswith("train.")
                else key.split(".") if "." in key else ["methods", method, key])
        set_path(out, path, value)
    return out


def set_path(tree: dict, path: Sequence[str], value: Any) -> None:
    """tree[p0][p1]...[leaf] = value, creating the mappings on the way."""
    *parents, leaf = path
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def shared_keys(assignment: Mapping) -> list[str]:
    """The assignment's keys override_of sets for every method, not the swept one's alone."""
    return [k for k in assignment if "." in k and not k.startswith("train.")]


def _short(m: Mapping | None) -> dict | None:
    """The scores a record keeps of a chain run: objective, final average and BWT."""
    if not m:
        return None
    cm = m["metrics"]
    return {"objective": round(m["objective"], 6), "final_avg": round(cm["final_avg"], 6),
            "bwt": None if cm["bwt"] != cm["bwt"] else round(cm["bwt"], 6)}


def export(params: Mapping, sequence: str, summaries: Mapping[str, str | Path],
           out: str | Path, worker_files: Mapping[str, list] | None = None) -> dict:
    """One params override for `sequence` from every method's sweep summary, with a record of
    each study (space, budget, trials, best values, validation objective, test scores)."""
    from cmcl.io import atomic_path  # here: cmcl.io loads torch, the Snakefile parse must not

    tuned: dict = {"methods": {}, "overrides": {}}
    record: dict = {"sequence": sequence, "n_trials": params["tune"]["n_trials"],
                    "objective": params["tune"]["objective"],
                    "val_fraction": params["tune"]["val_fraction"],
                    "seed": params["train"]["seeds"][0], "budget": params.get("budget"),
                    "methods": {}}
    for method, path in summaries.items():
        s = json.loads(Path(path).read_text())
        best = s["best"]
        tuned = deep_merge(tuned, override_of(method, best["params"]))
        record["methods"][method] = {
            "study": s["study"], "space": s.get("space"), "trials": s["states"],
            "best_trial": best["number"], "best": best["params"],
            "validation": round(best["value"], 6), "test": _short(s.get("test")),
            "default_test": _short(s.get("default_test"))}
        files = (worker_files or {}).get(method) or []
        if files:  # seconds the workers spent on trials (summed over workers)
            record["methods"][method]["worker_s"] = round(sum(
                json.loads(Path(f).read_text())["seconds"] for f in files), 1)
    tuned = {k: v for k, v in tuned.items() if v}
    text = (f"# Tuned hyperparameters for sequence `{sequence}`: one Optuna study per method, "
            f"{params['tune']['n_trials']} trials each,\n# scored on validation carved from "
            "train (test never seen). Written by `snakemake tune`; reviewed copies live in\n"
            "# pipeline/params/tuned/ and are used through `tuned:` in params.yaml. `record` is "
            "not params: how each value was obtained.\n")
    with atomic_path(out) as tmp:
        tmp.write_text(text + yaml.safe_dump({**tuned, "record": record}, sort_keys=True))
    return {**tuned, "record": record}
