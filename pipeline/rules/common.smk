# Input functions and the experiment matrix; rules stay thin and declarative.
import json
from pathlib import Path

import cmcl.config as cmcl_config
from cmcl.catalog import methods as method_catalog

SEQ = config["sequence"]
METHODS = config["train"]["methods"]
SEEDS = config["train"]["seeds"]
JOINT = {m for m, info in method_catalog().items() if info.joint}
BUILTIN_CORPORA = [n for n, c in config["corpora"].items() if c.get("builtin")]
# tasks whose corpus holds pre-extracted features: imported, never sharded or embedded
IMPORTED = [t for t, s in config["tasks"].items()
            if config["corpora"][s["corpus"]].get("adapter") == "features_h5"]
EMBEDDED = [t for t in config["tasks"] if t not in IMPORTED]
for _name in BUILTIN_CORPORA:
    if Path(config["corpora"][_name]["path"]) != Path("data/raw") / _name:
        raise ValueError(f"corpora.{_name}.path: a builtin corpus lives at data/raw/{_name}")


wildcard_constraints:
    task="|".join(config["tasks"]),
    split="train|test",
    method="[a-z0-9_]+",
    seed=r"\d+",


def as_json(obj):
    """Compact, key-sorted JSON: the rule's params, so a change reruns exactly that rule."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def task_spec(name):
    return cmcl_config.task_spec(config, name)


def get_corpus_dir(wildcards):
    return config["corpora"][config["tasks"][wildcards.task]["corpus"]]["path"]


def get_shard_cfg(wildcards):
    t = config["tasks"][wildcards.task]
    return as_json({"task": task_spec(wildcards.task), "corpus": config["corpora"][t["corpus"]],
                    "shard": config["shard"]})


def get_embed_cfg(wildcards):
    mods = config["tasks"][wildcards.task]["modalities"]
    enc = {m: e for m, e in config["embed"]["encoders"].items() if m in mods or m == "text"}
    return as_json({"embed": {**config["embed"], "encoders": enc}})


def train_features(split):
    return [f"data/features/{t}/{split}" for t in SEQ]


def steps_for(method):
    """Continual methods train every step; a joint method trains once, as step T."""
    return [0, len(SEQ)] if method in JOINT else list(range(len(SEQ) + 1))


def get_train_inputs(wildcards):
    step, run = int(wildcards.step), f"results/runs/{wildcards.method}/seed{wildcards.seed}"
    if wildcards.method in JOINT:
        return {"prev": f"{run}/step0", "features": train_features("train")}
    return {"prev": f"{run}/step{step - 1}", "features": f"data/features/{SEQ[step - 1]}/train"}


def get_train_cfg(wildcards):
    """Only this method's options: tuning one method never reruns another's jobs."""
    keys = ("model", "loss", "train")
    opts = {wildcards.method: config["methods"].get(wildcards.method, {})}
    task = cmcl_config.step_task(config, wildcards.method, int(wildcards.step))
    return as_json({**{k: config[k] for k in keys}, "methods": opts, "task": task})


def get_model_cfg(wildcards):
    return as_json({"model": config["model"]})


def get_eval_cfg(wildcards):
    return as_json({"loss": config["loss"], "eval": config["eval"],
                    "tasks": [task_spec(t) for t in SEQ]})


def get_report_cfg(wildcards):
    return as_json({"report": config["report"], "tasks": [task_spec(t) for t in SEQ]})


def all_evals():
    return [f"results/eval/{m}/seed{s}/step{t}.parquet"
            for m in METHODS for s in SEEDS for t in steps_for(m)]
