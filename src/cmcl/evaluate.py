"""Evaluate a step's model on the test split of every task (rule `evaluate`: a run's steps).

Embeddings of a test set are computed once and reused by every metric. Output: long-format
rows (run, method, seed, step, eval_task, metric, value), written as Parquet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from cmcl.corpora import resolve_classes
from cmcl.io import (
    atomic_dir,
    atomic_path,
    check_digest,
    load_tensors_digest,
    read_json,
    recorded_digest,
)
from cmcl.metrics import retrieval_metrics, zero_shot_accuracy
from cmcl.settings import EvalConfig, EvalSettings
from cmcl.settings import relevance as task_relevance
from cmcl.shards import read_features
from cmcl.steps import load_model, load_strategy

COLUMNS = ["sequence", "run", "method", "seed", "step", "eval_task", "metric", "value"]


@torch.no_grad()
def embed(fn, modality: str, x, batch_size: int = 1024, normalize: bool = True):
    """Batched embeddings through `fn(modality, x)` (a method's embed, or the bare model)."""
    x = torch.as_tensor(x)
    z = torch.cat([fn(modality, x[i: i + batch_size]) for i in range(0, len(x), batch_size)])
    return F.normalize(z, dim=-1) if normalize else z


def load_split(directory: str | Path) -> dict:
    """Features of a split plus its class prompts (if any): what `score_task` needs."""
    data = read_features(directory)
    classes_file = Path(directory) / "classes.safetensors"
    data["prompts"] = None
    if classes_file.exists():
        data["prompts"], found = load_tensors_digest(classes_file)
        check_digest(classes_file, recorded_digest(data["meta"], classes_file.name), found)
    return data


def score_task(fn, has_text: bool, task: Mapping, data: Mapping, ec: EvalSettings | Mapping,
               normalize: bool) -> dict[str, float]:
    """All metrics of one task on in-memory features (test split, or a sweep's validation)."""
    a, b = task["modalities"]
    ec = EvalSettings.of(ec)  # a partial section (library callers): the schema's rest
    bs = ec.batch_size
    za, zb = embed(fn, a, data[a], bs, normalize), embed(fn, b, data[b], bs, normalize)
    labels = torch.as_tensor(data["labels"])
    relevance = task_relevance(task)
    unlabelled = int((labels < 0).sum())
    if unlabelled and (relevance == "label" or unlabelled < len(labels)):
        need = ("relevance 'label' needs a label on every sample (each -1 would count as one "
                "class)" if relevance == "label" else
                "a split is labelled throughout or not at all (zero-shot accuracy would be "
                "left out)")
        raise ValueError(f"task '{task['name']}': {unlabelled} of {len(labels)} samples have "
                         f"no label (-1); {need}")
    out = retrieval_metrics(za, zb, labels if relevance == "label" else None, relevance,
                            ks=ec.ks, n_subsets=ec.n_subsets, subset_size=ec.subset_size,
                            seed=ec.seed)
    ct = data.get("prompts")
    if ct is not None and has_text and (labels >= 0).all():
        keep = ct["class_ids"] if not task.get("classes") else torch.tensor(sorted(
            resolve_classes(task["classes"], data.get("meta", {}).get("classes"),
                            f"tasks.{task['name']}.classes")))  # names, if unresolved at start
        prompts = ct["prompts"][keep]  # (C, templates, d_text)
        pe = embed(fn, "text", prompts.reshape(-1, prompts.shape[-1]), bs, True)
        cls = F.normalize(pe.reshape(len(keep), -1, pe.shape[-1]).mean(1), dim=-1)
        accs = []
        for m, z in ((a, za), (b, zb)):
            if m == "text":
                continue
            acc = zero_shot_accuracy(F.normalize(z, dim=-1), labels, cls, keep)
            out[f"zs_acc_{m}"] = acc
            accs.append(acc)
        if accs:
            out["zs_acc"] = sum(accs) / len(accs)
    return out


def evaluate_task(model, task: Mapping, test_dir: str | Path, ec: EvalSettings | Mapping,
                  normalize: bool, fn=None) -> dict[str, float]:
    return score_task(fn or model, "text" in model.in_dims, task, load_split(test_dir), ec,
                      normalize)


def evaluate_step(cfg: EvalConfig | Mapping, step_dir: str | Path, tasks: Sequence[Mapping],
                  test_dirs: Sequence[str | Path], out: str | Path,
                  sequence: str = "default", splits: Sequence[Mapping] | None = None
                  ) -> pd.DataFrame:
    """All metrics of one step on every task; writes Parquet atomically.

    `splits`: the test splits already loaded (load_split of each test dir), as evaluate_run
    passes them to every step of a run."""
    model, meta = load_model(step_dir)
    model.eval()
    strategy = load_strategy(step_dir, model)

    def fn(modality, x):
        return strategy.embed(model, modality, x)

    cfg = EvalConfig.of(cfg)
    normalize = cfg.loss.nce()["normalize"]
    rows = []
    name = meta.get("run", meta["method"])  # a variant's rows carry its own name
    run = f"{name}_s{meta['seed']}"
    for i, (task, test_dir) in enumerate(zip(tasks, test_dirs, strict=True)):
        data = splits[i] if splits is not None else load_split(test_dir)
        scores = score_task(fn, "text" in model.in_dims, task, data, cfg.eval, normalize)
        for metric, value in scores.items():
            rows.append((sequence, run, name, int(meta["seed"]), int(meta["step"]),
                         task["name"], metric, float(value)))
    df = pd.DataFrame(rows, columns=COLUMNS)
    with atomic_path(out) as tmp:
        df.to_parquet(tmp, index=False)
    return df


def evaluate_run(cfg: EvalConfig | Mapping, step_dirs: Sequence[str | Path],
                 tasks: Sequence[Mapping],
                 test_dirs: Sequence[str | Path], out_dir: str | Path,
                 sequence: str = "default") -> list[pd.DataFrame]:
    """Every step of a run in one job: the test splits are read once, one step<t>.parquet each
    (the same rows as evaluate_step per step) in `out_dir`, written atomically as a folder."""
    cfg = EvalConfig.of(cfg)
    splits = [load_split(d) for d in test_dirs]
    steps = [int(read_json(Path(d) / "meta.json")["step"]) for d in step_dirs]
    if len(set(steps)) != len(steps):
        raise ValueError(f"evaluate: two step folders with the same step among {steps}")
    with atomic_dir(out_dir) as tmp:
        return [evaluate_step(cfg, d, tasks, test_dirs, tmp / f"step{t}.parquet", sequence,
                              splits) for d, t in zip(step_dirs, steps, strict=True)]

