# Input functions and the experiment matrix; rules stay thin and declarative.
from pathlib import Path

from cmcl import stages

SEQUENCES = config["sequences"]  # name -> task list
METHODS = config["train"]["methods"]
SEEDS = config["train"]["seeds"]
JOINT = {m for m in METHODS if stages.is_joint(config, m)}
BUILTIN_CORPORA = [n for n, c in config["corpora"].items() if c.get("builtin")]
IMPORTED = [t for t in config["tasks"] if stages.imported(config, t)]
EMBEDDED = [t for t in config["tasks"] if t not in IMPORTED]
for _name in BUILTIN_CORPORA:
    if Path(config["corpora"][_name]["path"]) != Path("data/raw") / _name:
        raise ValueError(f"corpora.{_name}.path: a builtin corpus lives at data/raw/{_name}")


wildcard_constraints:
    task="|".join(config["tasks"]),
    sequence="|".join(SEQUENCES),
    split="train|test",
    method="[a-z0-9_]+",
    seed=r"\d+",


def task_spec(name):
    return stages.task_spec(config, name)


def get_corpus_dir(wildcards):
    return config["corpora"][config["tasks"][wildcards.task]["corpus"]]["path"]


def get_corpus_cfg(wildcards):
    return stages.corpus(config, wildcards.corpus).params()


def get_shard_cfg(wildcards):
    return stages.shard(config, wildcards.task).params()


def get_embed_cfg(wildcards):
    return stages.embed(config, wildcards.task).params()


def features(sequence, split):
    return [f"data/features/{t}/{split}" for t in SEQUENCES[sequence]]


def all_features(split):
    return [f"data/features/{t}/{split}" for t in dict.fromkeys(sum(SEQUENCES.values(), []))]


def steps_for(sequence, method):
    """Continual methods train every step; a joint method trains once, as step T."""
    n = len(SEQUENCES[sequence])
    return [0, n] if method in JOINT else list(range(n + 1))


def run_dir(w):
    return f"results/runs/{w.sequence}/{w.method}/seed{w.seed}"


def get_init_features(wildcards):
    return features(wildcards.sequence, "train")


def get_train_inputs(wildcards):
    step, run = int(wildcards.step), run_dir(wildcards)
    if wildcards.method in JOINT:
        return {"prev": f"{run}/step0", "features": features(wildcards.sequence, "train")}
    task = SEQUENCES[wildcards.sequence][step - 1]
    return {"prev": f"{run}/step{step - 1}", "features": f"data/features/{task}/train"}


def get_train_cfg(wildcards):
    return stages.train(config, wildcards.sequence, wildcards.method,
                        int(wildcards.step)).params()


def get_model_cfg(wildcards):
    return stages.init(config, wildcards.method).params()


def get_eval_features(wildcards):
    return features(wildcards.sequence, "test")


def get_eval_models(wildcards):
    """Every step folder of one run: evaluated in one job (the test splits are read once)."""
    return [f"{run_dir(wildcards)}/step{t}"
            for t in steps_for(wildcards.sequence, wildcards.method)]


def get_eval_cfg(wildcards):
    return stages.evaluate(config, wildcards.sequence).params()


def get_report_cfg(wildcards):
    return stages.report(config).params()


def get_check_cfg(wildcards):
    return stages.check(config).params()


def get_sweep_cfg(wildcards):
    return stages.sweep(config).params()


def get_tune_cfg(wildcards):
    return stages.tune(config, wildcards.sequence, wildcards.method).params()


def get_tune_export_cfg(wildcards):
    return stages.tune_export(config).params()


def all_evals():
    """One folder per run, holding step<t>.parquet for each of its steps."""
    return [f"results/eval/{q}/{m}/seed{s}" for q in SEQUENCES for m in METHODS for s in SEEDS]


# Named functions for the sweep, tuning, training and report rules (no lambdas in rules).


def get_train_features(wildcards):
    return features(wildcards.sequence, "train")


def get_test_features(wildcards):
    return features(wildcards.sequence, "test")


def get_checkpoint_every(wildcards, resources):
    """train.checkpoint_every as this run trains with it (its variant and overrides included).

    How often a step saves a preemption checkpoint cannot change its result, so a change must
    rerun nothing: Snakemake's params trigger records only params that are not derived, and a
    params function that takes the job's `resources` (or threads, input, output) is derived.
    Not a resource either: no scheduler reads it."""
    return stages.method_params(config, wildcards.method)["train"]["checkpoint_every"]


def get_out_dir(wildcards, output):
    """The folder all of the rule's outputs lie in, for commands that take `--out-dir` (the
    path comes from the rule's outputs, not the shell; derived from them, so no param trigger)."""
    from os.path import commonpath, dirname

    return commonpath([dirname(o) for o in output])


def get_sweep_workers(wildcards):
    return expand("results/sweep/{study}/worker{worker}.json", study=wildcards.study,
                  worker=range(config["sweep"]["n_workers"]))


def get_sweep_journal(wildcards):
    """The study's Optuna journal: every worker appends to it, so it is no job's output."""
    return f"results/sweep/{wildcards.study}/journal.log"


def get_sweep_sources(wildcards, output):
    """The --configfile files and --config values this run was given, for best.yaml's command
    (JSON). Names of files change no score: taking `output` makes it derived, no rerun trigger."""
    import json
    import os

    def shown(f):  # relative when inside the working directory, as the user would type it
        rel = os.path.relpath(f)
        return str(f) if rel.startswith("..") else rel

    cs = workflow.config_settings
    return json.dumps({"configfiles": [shown(f) for f in workflow.overwrite_configfiles],
                       "config_args": list(cs.config_args or [])})


def get_tune_workers(wildcards):
    return expand("results/tune/{sequence}/{method}/worker{worker}.json",
                  sequence=wildcards.sequence, method=wildcards.method,
                  worker=range(config["tune"]["n_workers"]))


def get_tune_journal(wildcards):
    """One (sequence, method) study's Optuna journal, shared by its workers."""
    return f"results/tune/{wildcards.sequence}/{wildcards.method}/journal.log"


def get_tune_methods(wildcards):
    """The methods tuned on this sequence (TUNE_MATRIX, pipeline/rules/tune.smk)."""
    return [m for s, m in TUNE_MATRIX if s == wildcards.sequence]


def get_tune_summaries(wildcards):
    return [f"reports/tune/{wildcards.sequence}/{m}/summary.json"
            for m in get_tune_methods(wildcards)]
