"""Optuna sweeps (projection thresholds, lr, ...) run by N concurrent worker jobs.

Each worker runs whole task chains in-process with the library API, scored on a validation
split carved from every task's *training* features (the test split is touched once, by
`best`, after the sweep). A trial reports its running objective after every task and may be
pruned there. The first step of a method whose first task does not depend on the swept options
(DNS, GPM, Adam-NSCL: no past, no projection) is trained once per worker and reused.
"""

from __future__ import annotations

import copy
import shlex
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import optuna
import torch
import yaml
from accelerate.utils import set_seed

from cmcl import stages
from cmcl.evaluate import load_split, score_task
from cmcl.io import atomic_path, write_json
from cmcl.metrics import continual_metrics
from cmcl.schema import complete
from cmcl.settings import EvalConfig, StepConfig
from cmcl.stages import method_params, sweep_tasks, task_spec  # noqa: F401  (sweep_tasks re-exported)
from cmcl.strategies import discover, get_strategy
from cmcl.train import fit_task, fit_tasks, make_accelerator, new_model, step_seed
from cmcl.tuning import override_of, set_path, shared_keys

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
            optuna.trial.TrialState.FAIL)


# -- search space ---------------------------------------------------------------------------
def key_path(key: str, method: str) -> list[str]:
    """`threshold_in` -> methods.<method>.threshold_in; dotted keys are absolute paths."""
    return key.split(".") if "." in key else ["methods", method, key]


def apply(params: Mapping, assignment: Mapping, method: str) -> dict:
    """A copy of params with the assignment's values set (what a trial trains with)."""
    out = copy.deepcopy(dict(params))
    for key, value in assignment.items():
        set_path(out, key_path(key, method), value)
    return out


def suggest(trial: optuna.Trial, space: Mapping) -> dict:
    out = {}
    for key, spec in space.items():
        kind, log = spec["type"], spec.get("log", False)
        if kind == "float":
            out[key] = trial.suggest_float(key, spec["low"], spec["high"], log=log)
        elif kind == "int":
            out[key] = trial.suggest_int(key, spec["low"], spec["high"], log=log)
        else:
            out[key] = trial.suggest_categorical(key, spec["choices"])
    return out


def study_name(params: Mapping) -> str:
    """The configured name plus the sweep stage's key (cmcl.stages.sweep: what a trial's score
    depends on), so a changed space, objective or data starts a fresh study instead of mixing
    incomparable ones, while adding a method or a seed, or adopting tuned values, does not."""
    # completed first: a job's --cfg and the caller's params name the same study
    return f"{params['sweep']['study']}-{stages.sweep(complete(params)).key()[:10]}"


def storage(params: Mapping, journal: str | Path) -> optuna.storages.BaseStorage | str:
    url = params["sweep"].get("storage")
    if url:
        return url
    Path(journal).parent.mkdir(parents=True, exist_ok=True)
    backend = optuna.storages.journal.JournalFileBackend(
        str(journal), lock_obj=optuna.storages.journal.JournalFileOpenLock(f"{journal}.lock"))
    return optuna.storages.journal.JournalStorage(backend)


def open_study(params: Mapping, journal: str | Path, worker: int = 0) -> optuna.Study:
    sw = complete({"sweep": params["sweep"]})["sweep"]  # a library caller's partial section
    sampler = optuna.samplers.TPESampler(seed=sw["seed"] + worker,
                                         n_startup_trials=sw["n_startup_trials"])
    pruner = optuna.pruners.MedianPruner(n_startup_trials=sw["n_startup_trials"],
                                         n_warmup_steps=1)
    return optuna.create_study(study_name=study_name(params), storage=storage(params, journal),
                               sampler=sampler, pruner=pruner, direction="maximize",
                               load_if_exists=True)


# -- data -----------------------------------------------------------------------------------
def split_validation(data: Mapping, fraction: float, seed: int) -> tuple[dict, dict]:
    """Carve a seeded validation subset out of a task's training features."""
    n = len(data["labels"])
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(fraction * n)))
    idx = {"val": np.sort(perm[:n_val]), "train": np.sort(perm[n_val:])}
    mods = data["meta"]["modalities"]
    parts = [{**{m: data[m][i] for m in mods}, "labels": data["labels"][i], "meta": data["meta"],
              "prompts": data.get("prompts")} for i in (idx["train"], idx["val"])]
    return parts[0], parts[1]


def load_chain_data(params: Mapping, feature_root: str | Path, held_out: str) -> dict:
    """{task: (train, eval)}: eval = carved validation ("val") or the test split ("test")."""
    out = {}
    for i, name in enumerate(sweep_tasks(params)):
        train = load_split(Path(feature_root) / name / "train")
        if held_out == "val":
            out[name] = split_validation(train, params["sweep"]["val_fraction"],
                                         params["sweep"]["seed"] + i)
        else:
            out[name] = (train, load_split(Path(feature_root) / name / "test"))
    return out


# -- one chain ------------------------------------------------------------------------------
class ChainRunner:
    """Runs a method through the task sequence in-process and scores it on held-out data."""

    def __init__(self, params: Mapping, data: Mapping, seed: int | None = None) -> None:
        self.params, self.data = params, data
        self.method = params["sweep"]["method"]
        self.seed = params["train"]["seeds"][0] if seed is None else seed
        self.acc = make_accelerator(params["train"])
        self.cache: dict[str, tuple[dict, Path]] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="cmcl-sweep-"))

    def tasks(self) -> list[dict]:
        return [task_spec(self.params, t) for t in sweep_tasks(self.params)]

    def _first_step_key(self, cfg: Mapping) -> str | None:
        """The result key of step 1 without the options it ignores: trials equal there share
        one trained first step."""
        free = getattr(discover()[self.method], "first_step_ignores", ())
        if not free:
            return None
        ignores = {**stages.TRAIN_IGNORES, "not_result": tuple(
            f"methods.{self.method}.{k}" for k in free)}
        step1 = {k: cfg[k] for k in ("model", "loss", "train")} | {
            "methods": {self.method: cfg["methods"].get(self.method, {})}}
        return stages.Stage("train", step1, **ignores).key()

    def _scores(self, model, strategy, ev: EvalConfig) -> list[dict]:
        ec, norm = ev.eval, ev.loss.nce()["normalize"]

        def fn(m, x):
            return strategy.embed(model, m, x.to(self.acc.device))

        with torch.no_grad():
            return [score_task(fn, "text" in model.in_dims, t, self.data[t["name"]][1], ec, norm)
                    for t in self.tasks()]

    def _step_strategy(self, sc: StepConfig, model, state: Path | None, step: int):
        """A step's strategy as train_step builds it: seeded with the step's seed, then the
        previous step's saved state (its RNG states included), so a trial scores what the
        pipeline would train."""
        set_seed(step_seed(self.seed, step), deterministic=sc.train.deterministic)
        strategy = get_strategy(self.method, sc)
        strategy.load_state(state, model)
        return strategy

    def _chain(self, cfg: Mapping, model, tasks: list[dict], metric: str,
               run_dir: Path, trial: optuna.Trial | None) -> list[list[float]]:
        """The accuracy rows of one chain: step 0, then each step trained and scored."""
        sc, ev = StepConfig.of(cfg), EvalConfig.of(cfg)
        strategy = get_strategy(self.method, sc)  # step 0: untrained heads, no state
        strategy.load_state(None, model)
        rows = [[s[metric] for s in self._scores(model, strategy, ev)]]
        if discover()[self.method].joint:  # one step T over the union, as the pipeline runs it
            n = len(tasks)
            strategy = self._step_strategy(sc, model, None, n)
            parts = [(t, *(torch.from_numpy(self.data[t["name"]][0][k])
                           for k in (*t["modalities"], "labels"))) for t in tasks]
            model, _ = fit_tasks(model, strategy, sc, parts, n, self.seed, self.acc)
            rows += [[float("nan")] * n] * (n - 1) + [
                [s[metric] for s in self._scores(model, strategy, ev)]]
            if trial is not None:
                trial.report(float(np.mean(rows[-1])), n)
            return rows
        state: Path | None = None
        for step, task in enumerate(tasks, start=1):
            key = self._first_step_key(cfg) if step == 1 else None
            if key is not None and key in self.cache:
                weights, state = self.cache[key]
                model.load_state_dict(weights)
                strategy = get_strategy(self.method, sc)
                strategy.load_state(state, model)
            else:
                strategy = self._step_strategy(sc, model, state, step)
                tr = self.data[task["name"]][0]
                a, b = task["modalities"]
                model, _ = fit_task(model, strategy, sc, task, step, self.seed,
                                    torch.from_numpy(tr[a]), torch.from_numpy(tr[b]),
                                    torch.from_numpy(tr["labels"]), self.acc)
                state = (self.tmp / key) if key is not None else run_dir / f"step{step}"
                state.mkdir(exist_ok=True)
                strategy.save_state(state)
                if key is not None:
                    self.cache[key] = (copy.deepcopy(model.state_dict()), state)
            rows.append([s[metric] for s in self._scores(model, strategy, ev)])
            if trial is not None:
                trial.report(float(np.mean(rows[-1][:step])), step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after task {step}")
        return rows

    def run(self, cfg: Mapping, trial: optuna.Trial | None = None) -> dict:
        """Train the whole chain with `cfg`; return objective, accuracy matrix and metrics."""
        cfg = complete({**cfg, **method_params(cfg, self.method),
                        "methods": {self.method: discover()[self.method].resolve_options(
                            cfg.get("methods", {}).get(self.method, {}))}})
        metric = cfg["sweep"]["objective"]["metric"]
        tasks = self.tasks()
        dims = {}
        for t in tasks:
            dims.update(self.data[t["name"]][0]["meta"]["dims"])
        sc = StepConfig.of(cfg)
        set_seed(self.seed, deterministic=sc.train.deterministic)
        model = new_model(sc.model, dims, self.seed)
        run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=self.tmp))
        try:
            rows = self._chain(cfg, model, tasks, metric, run_dir, trial)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        a = np.asarray(rows, dtype=float)
        cm = continual_metrics(a)
        bwt = 0.0 if np.isnan(cm["bwt"]) else cm["bwt"]
        objective = cm["final_avg"] + cfg["sweep"]["objective"]["bwt_weight"] * bwt
        return {"objective": float(objective), "matrix": a.tolist(), "metrics": cm}


# -- workers and results --------------------------------------------------------------------
def worker(params: Mapping, feature_root: str | Path, journal: str | Path, worker_id: int,
           out: str | Path) -> dict:
    """Run trials until the study holds n_trials finished ones; never more (file-locked ask)."""
    sw = params["sweep"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(params, journal, worker_id)
    runner = ChainRunner(params, load_chain_data(params, feature_root, "val"))
    reserve = optuna.storages.journal.JournalFileOpenLock(f"{journal}.reserve")
    mine, t0 = [], time.time()
    while True:
        reserve.acquire()
        try:
            taken = [t for t in study.get_trials(deepcopy=False)
                     if t.state in FINISHED or t.state == optuna.trial.TrialState.RUNNING]
            if len(taken) >= sw["n_trials"]:
                break
            trial = study.ask()
        finally:
            reserve.release()
        assignment = suggest(trial, sw["space"])
        try:
            res = runner.run(apply(params, assignment, sw["method"]), trial)
            study.tell(trial, res["objective"])
            state = "complete"
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            state = "pruned"
        except (FloatingPointError, ValueError) as e:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            state = f"failed: {e}"
        mine.append({"number": trial.number, "params": assignment, "state": state})
        print(f"worker {worker_id}: trial {trial.number} {state} {assignment}", flush=True)
    summary = {"study": study.study_name, "worker": worker_id, "trials": mine,
               "seconds": round(time.time() - t0, 2)}
    write_json(out, summary)
    return summary


def use_command(best_yaml: str | Path, configfiles: list[str] | None,
                config_args: list[str] | None = None) -> str:
    """The command that runs the best params: the study's own --configfile files, then
    best.yaml (merged last, as Snakemake merges), then its --config values; None: unknown."""
    files = ["<the --configfile files the study ran with>"] if configfiles is None else [
        shlex.quote(str(f)) for f in configfiles]
    cmd = f"snakemake --cores all --configfile {' '.join([*files, shlex.quote(str(best_yaml))])}"
    if config_args:
        cmd += " --config " + " ".join(map(shlex.quote, config_args))
    return cmd


def write_best(path: str | Path, study: str, trial: optuna.trial.FrozenTrial, method: str,
               sources: Mapping | None = None) -> dict:
    """best.yaml: the swept method's options under methods.<m>, its train.* values under
    overrides.<m>.train (as tune_export writes them: no other method is retrained), and the
    command that merges it after the config files the study ran with (`sources`)."""
    override = override_of(method, trial.params)
    src = sources or {}
    lines = [f"best of study {study}: trial {trial.number}, validation objective "
             f"{trial.value:.6f}",
             f"use: {use_command(path, src.get('configfiles'), src.get('config_args'))}",
             f"({method}'s options and train settings: no other method's change)"]
    shared = shared_keys(trial.params)
    if shared:
        lines.append(f"{', '.join(shared)}: shared, every method of train.methods runs with it")
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"# {line}\n" for line in lines)
                       + yaml.safe_dump(override, sort_keys=True))
    return override


def best(params: Mapping, feature_root: str | Path, journal: str | Path,
         out_dir: str | Path, sources: Mapping | None = None) -> dict:
    """best.yaml (a params override), figures, and the test scores of the best params.

    `sources`: {"configfiles": [...], "config_args": [...]} the pipeline ran with, for the
    command best.yaml names (None: unknown, the command says where they go)."""
    sw = params["sweep"]
    out_dir = Path(out_dir)
    study = open_study(params, journal)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise ValueError(f"{journal}: study '{study.study_name}' has no completed trial")
    bt = study.best_trial
    write_best(out_dir / "best.yaml", study.study_name, bt, sw["method"], sources)
    _plots(study, sw, out_dir)
    final = apply(params, bt.params, sw["method"])
    runner = ChainRunner(final, load_chain_data(final, feature_root, "test"))
    test = runner.run(final)
    summary = {"study": study.study_name, "n_trials": len(trials),
               "states": {s.name: sum(t.state == s for t in trials) for s in FINISHED},
               "best": {"number": bt.number, "value": bt.value, "params": bt.params},
               "space": sw["space"], "test": test}
    if sw.get("baseline"):  # the method's defaults on the same test data: defaults vs tuned
        summary["default_test"] = runner.run(params)
    write_json(out_dir / "summary.json", summary)
    return summary


def _plots(study: optuna.Study, sw: Mapping, out_dir: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def save(fig: Figure, name: str) -> None:
        FigureCanvasAgg(fig)
        fig.tight_layout()
        with atomic_path(out_dir / name) as tmp:
            fig.savefig(tmp, format="png", dpi=110)

    done = [t for t in study.get_trials(deepcopy=False) if t.value is not None]
    pruned = [t for t in study.get_trials(deepcopy=False)
              if t.state == optuna.trial.TrialState.PRUNED]
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.scatter([t.number for t in done], [t.value for t in done], label="complete")
    ax.plot([t.number for t in done], np.maximum.accumulate([t.value for t in done]), "k-",
            label="best so far")
    for t in pruned:
        ax.axvline(t.number, color="0.8", lw=0.8, zorder=0)
    ax.set(xlabel="trial", ylabel="objective (validation)", title="optimisation history "
           "(grey: pruned)")
    ax.legend()
    save(fig, "history.png")

    try:
        imp = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # too few trials or a constant space
        imp = {}
    fig = Figure(figsize=(6, 3))
    ax = fig.add_subplot()
    ax.barh(list(imp) or ["(not enough trials)"], list(imp.values()) or [0])
    ax.set(xlabel="importance (fANOVA)", title="parameter importances")
    save(fig, "importances.png")

    keys = list(sw["space"])
    fig = Figure(figsize=(4 * len(keys), 3.5))
    for i, key in enumerate(keys, 1):
        ax = fig.add_subplot(1, len(keys), i)
        pts = [(t.params[key], t.value) for t in done if key in t.params]
        if pts and not isinstance(pts[0][0], str):
            ax.scatter(*zip(*pts, strict=True))
            if sw["space"][key].get("log"):
                ax.set_xscale("log")
        elif pts:
            labels = sorted({p for p, _ in pts})
            ax.scatter([labels.index(p) for p, _ in pts], [v for _, v in pts])
            ax.set_xticks(range(len(labels)), labels)
        ax.set(xlabel=key, ylabel="objective")
    save(fig, "slice.png")
