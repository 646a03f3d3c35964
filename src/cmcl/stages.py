"""What each pipeline stage reads and which of it can change a result, defined once.

From validated params, `stages.<stage>(params, ...)` builds the config of one job:
- `values`: what the job reads (the `--cfg` JSON of `python -m cmcl <verb>`);
- `not_output`: keys it reads that cannot change its output (process counts, how often to
  checkpoint, the experiment matrix around the job);
- `not_result`: keys that change its output bytes but no number downstream (how data is cut
  into tars);
- `neutral`: keys added after results were recorded, at the value that reproduces the earlier
  behaviour; left out of identities while they sit there, so adding them voids nothing.

Every consumer asks these objects: the rules' params (`params()`, Snakemake's rerun trigger),
the `check` fingerprints (`run_key`: every stage a run's numbers come from), resume and sweep
fingerprints. A job gets the keys an identity left out back from the schema (`cmcl.schema`).
"""

from __future__ import annotations

from collections.abc import Mapping

from cmcl.catalog import methods
from cmcl.config import metric_names  # noqa: F401  (re-exported: the stage API)
from cmcl.identity import (  # noqa: F401  (re-exported: the stage API)
    CHECKPOINTS,
    EMBED_IGNORES,
    MATRIX,
    SHARD_IGNORES,
    TRAIN_IGNORES,
    Stage,
    as_json,
    digest,
)
from cmcl.tuning import tune_cfg


# -- a run's settings: the shared sections, then its variant's, then its overrides ----------
def base_method(params: Mapping, run: str) -> str:
    """The registered method a member of train.methods runs (itself, or its variant's)."""
    return params.get("variants", {}).get(run, {}).get("method", run)


def is_joint(params: Mapping, run: str) -> bool:
    """Whether `run` trains once, as step T over the union of its sequence's tasks."""
    return methods()[base_method(params, run)].joint


def imported(params: Mapping, task: str) -> bool:
    """Whether `task`'s corpus holds pre-extracted features: imported, never sharded or
    embedded (adapter features_h5)."""
    return params["corpora"][params["tasks"][task]["corpus"]].get("adapter") == "features_h5"


def run_options(params: Mapping, run: str) -> dict:
    """The options `run` trains with: its variant's (merged over the method's), or the
    method's own."""
    variant = params.get("variants", {}).get(run)
    return dict(variant["options"]) if variant else dict(params.get("methods", {}).get(run, {}))


def strategy_cfg(params: Mapping, run: str) -> dict:
    """What a job needs to build `run`'s strategy: the base method and only its options (so
    tuning one method never reruns another)."""
    base = base_method(params, run)
    return {"method": base, "methods": {base: run_options(params, run)}}


def train_cfg(params: Mapping, sequence: str, run: str, step: int) -> dict:
    """Everything a training step of `run` reads: the --cfg of `python -m cmcl train`."""
    return {**method_params(params, run), **strategy_cfg(params, run),
            "task": step_task(params, sequence, run, step)}


def task_spec(params: Mapping, name: str) -> dict:
    """A task's settings plus its name: what shard/train/evaluate receive."""
    return {"name": name, **params["tasks"][name]}


def method_params(params: Mapping, method: str) -> dict:
    """model/loss/train as `method` trains with them: the shared sections, then its variant's
    train settings, then its overrides."""
    var = params.get("variants", {}).get(method, {}).get("train", {})
    over = params.get("overrides", {}).get(method, {}).get("train", {})
    return {"model": params["model"], "loss": params["loss"],
            "train": {**params["train"], **var, **over}}


def step_task(params: Mapping, sequence: str, method: str, step: int) -> dict:
    """What training step `step` of `method` on `sequence` trains on: one task, or all of them
    for a joint method (its single step T over the union)."""
    names = params["sequences"][sequence]
    if is_joint(params, method):
        return {"name": "joint", "tasks": [task_spec(params, t) for t in names]}
    return task_spec(params, names[step - 1])


# -- the stages -------------------------------------------------------------------------
def corpus(params: Mapping, name: str) -> Stage:
    """Materialising a builtin corpus."""
    return Stage("corpus", dict(params["corpora"][name]))


def shard(params: Mapping, task: str) -> Stage:
    """Sharding one task's splits (or importing them: adapter features_h5)."""
    t = params["tasks"][task]
    return Stage("shard", {"task": task_spec(params, task),
                           "corpus": params["corpora"][t["corpus"]], "shard": params["shard"]},
                 **SHARD_IGNORES)


def embed(params: Mapping, task: str) -> Stage:
    """Embedding one task's shards: only the encoders of its modalities (and text, whose
    class prompts zero-shot scoring embeds)."""
    mods = params["tasks"][task]["modalities"]
    enc = {m: e for m, e in params["embed"]["encoders"].items() if m in mods or m == "text"}
    return Stage("embed", {"embed": {**params["embed"], "encoders": enc}}, **EMBED_IGNORES)


def init(params: Mapping, run: str) -> Stage:
    """Step 0 of a run: the untrained heads (a variant: and the method it runs)."""
    cfg: dict = {"model": params["model"]}
    if base_method(params, run) != run:
        cfg |= strategy_cfg(params, run)
    return Stage("init", cfg)


def train(params: Mapping, sequence: str, run: str, step: int) -> Stage:
    """Training step `step` of `run`: only this run's options and overrides, so tuning one
    method never reruns another's."""
    cfg = train_cfg(params, sequence, run, step)
    if cfg["method"] == run:  # implied by the run's name: only a variant names its method
        del cfg["method"]
    return Stage("train", cfg, **TRAIN_IGNORES)


def evaluate(params: Mapping, sequence: str) -> Stage:
    """Scoring every step of a run on the sequence's test splits."""
    return Stage("evaluate", {"loss": params["loss"], "eval": params["eval"],
                              "sequence": sequence,
                              "tasks": [task_spec(params, t)
                                        for t in params["sequences"][sequence]]})


def run_key(params: Mapping, sequence: str, run: str) -> str:
    """Fingerprint of everything `run`'s numbers on `sequence` come from: the result identity
    of each stage feeding it (data, init, every step, evaluation) and the seeds averaged."""
    names = params["sequences"][sequence]
    steps = [len(names)] if is_joint(params, run) else range(1, len(names) + 1)
    blob = {"data": {t: [shard(params, t).result_identity(),
                         None if imported(params, t) else embed(params, t).result_identity()]
                     for t in names},
            "init": init(params, run).result_identity(),
            "steps": [train(params, sequence, run, s).result_identity() for s in steps],
            "evaluate": evaluate(params, sequence).result_identity(),
            "seeds": params["train"]["seeds"], "run": run}
    return digest(blob)


def checked_metrics(params: Mapping) -> list[str]:
    """The metrics `check` compares: the main score, its BWT, the widest R@k, zero-shot."""
    return ["map_final_avg", "map_bwt", f"r{max(params['eval']['ks'])}_final_avg",
            "zs_acc_final_avg"]


def check(params: Mapping) -> Stage:
    """The reproduction guard: the fingerprint of every run of the matrix, and what it compares
    (so it reruns exactly when a run's identity or the compared metrics change)."""
    runs = {q: {m: run_key(params, q, m) for m in params["train"]["methods"]}
            for q in params["sequences"]}
    return Stage("check", {"fingerprints": runs, "metrics": checked_metrics(params)})


def run_settings(params: Mapping) -> dict:
    """What the report states the numbers were obtained with: model, loss, encoders (or
    imported features), the shared train settings, each method's own, the tuned file."""
    skip = {*MATRIX, *CHECKPOINTS}  # the matrix itself; how often a step saves
    shared = {k: v for k, v in params["train"].items() if f"train.{k}" not in skip}
    own = {m: {k: v for k, v in method_params(params, m)["train"].items()
               if f"train.{k}" not in skip and shared.get(k) != v}
           for m in params["train"]["methods"]}
    used = {t for names in params["sequences"].values() for t in names}
    return {"model": params["model"], "loss": params["loss"], "train": shared,
            "methods": {m: d for m, d in own.items() if d}, "tuned": params.get("tuned"),
            "encoders": params["embed"]["encoders"],
            "imported": sorted(t for t in used if imported(params, t))}


def report(params: Mapping) -> Stage:
    """The report: sequences, metric names (from eval.ks), the settings behind the numbers
    and what each variant sets."""
    cfg: dict = {"report": params["report"], "metrics": metric_names(params),
                 "settings": run_settings(params),
                 "sequences": {s: [task_spec(params, t) for t in names]
                               for s, names in params["sequences"].items()}}
    variants = {v: {"method": spec["method"], "description": spec.get("description", ""),
                    "set": {**spec.get("given", {}), **spec["train"]}}
                for v, spec in params["variants"].items() if v in params["train"]["methods"]}
    if variants:  # only then: a matrix without variants keeps its report params
        cfg["variants"] = variants
    return Stage("report", cfg)


def sweep_sequence(params: Mapping) -> str:
    """The sequence the study tunes on: sweep.sequence, else the first declared."""
    return params["sweep"].get("sequence") or next(iter(params["sequences"]))


def sweep_tasks(params: Mapping) -> list[str]:
    """The task names of the sequence the study tunes on."""
    return list(params["sequences"][sweep_sequence(params)])


def sweep(params: Mapping) -> Stage:
    """A sweep worker / best job: the swept method's own settings on the swept tasks, as a
    params subset the sweep code reads like params. Its key names the study: only what a
    trial's score depends on, minus the values the space sets (adopting tuned values, adding
    a method or a seed never restarts the study)."""
    sw = params["sweep"]
    method, space = sw["method"], sw["space"]
    names, seq = sweep_tasks(params), sweep_sequence(params)
    corpora = {params["tasks"][t]["corpus"] for t in names}
    values = {"sweep": sw, "model": params["model"], "loss": params["loss"],
              "eval": params["eval"], "train": method_params(params, method)["train"],
              "first_seed": params["train"]["seeds"][0],  # the seed every trial trains with
              "methods": {method: params.get("methods", {}).get(method, {})},
              "overrides": {}, "variants": {},  # both merged into `train` already
              "sequences": {seq: params["sequences"][seq]},
              "tasks": {t: params["tasks"][t] for t in names},
              "corpora": {c: v for c, v in params.get("corpora", {}).items() if c in corpora},
              "embed": params.get("embed", {}), "shard": params.get("shard", {})}
    swept = tuple(k if "." in k else f"methods.{method}.{k}" for k in space)
    return Stage("sweep", values, not_output=CHECKPOINTS,
                 not_result=(*MATRIX, *SHARD_IGNORES["not_output"],
                             *SHARD_IGNORES["not_result"], *EMBED_IGNORES["not_output"],
                             *EMBED_IGNORES["not_result"], "sweep.study", "sweep.n_trials",
                             "sweep.n_workers", "sweep.storage", "sweep.n_startup_trials", *swept),
                 neutral=TRAIN_IGNORES["neutral"])


def tune(params: Mapping, sequence: str, method: str) -> Stage:
    """One (sequence, method) study of the tuning matrix: a sweep over that method's space on
    params reduced to its own inputs (cmcl.tuning.tune_cfg), so tuning one method never reruns
    another's workers."""
    return Stage("tune", tune_cfg(params, sequence, method),
                 not_output=CHECKPOINTS, neutral=TRAIN_IGNORES["neutral"])


def tune_export(params: Mapping) -> Stage:
    """Writing a sequence's tuned file from its studies' summaries."""
    return Stage("tune_export", {k: params[k] for k in ("tune", "train", "budget")})
