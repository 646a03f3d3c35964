"""Retrieval, zero-shot and continual-learning metrics.

All scores are fractions in [0, 1]; the report converts to percent. Rankings are deterministic
(ties go to the lower gallery index) so that reruns and different machines give identical numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from cmcl.schema import defaults

_QUERY_CHUNK = 2048  # bounds the (chunk, ng) rank-order buffers for large galleries


def _relevance_mask(nq: int, ng: int, q_labels: torch.Tensor | None,
                    g_labels: torch.Tensor | None, relevance: str) -> torch.Tensor:
    if relevance == "instance":
        if nq != ng:
            raise ValueError(f"instance relevance needs a square similarity matrix, got {nq}x{ng}")
        return torch.eye(nq, dtype=torch.bool)
    if relevance == "label":
        if q_labels is None or g_labels is None:
            raise ValueError("label relevance needs both q_labels and g_labels")
        q, g = q_labels.reshape(-1).cpu(), g_labels.reshape(-1).cpu()
        if len(q) != nq or len(g) != ng:
            raise ValueError(f"label lengths ({len(q)}, {len(g)}) do not match sim {nq}x{ng}")
        if (q < 0).any() or (g < 0).any():  # -1 is 'unlabelled': all of them would match
            raise ValueError(f"label relevance needs a class label >= 0 on every item; "
                             f"{int((q < 0).sum())} of {nq} queries and {int((g < 0).sum())} "
                             f"of {ng} gallery items have none (-1), and would all count as "
                             "one class")
        return q[:, None] == g[None, :]
    raise ValueError(f"relevance must be 'instance' or 'label', got {relevance!r}")


def retrieval_scores(sim: torch.Tensor, q_labels: torch.Tensor | None,
                     g_labels: torch.Tensor | None, relevance: str,
                     ks: Sequence[int] | None = None) -> dict[str, float]:
    """R@k and mAP of a (nq, ng) query x gallery similarity matrix, averaged over queries.

    `ks` None: the schema's eval.ks.

    "instance": gallery item i is the only relevant item for query i (needs nq == ng).
    "label": every gallery item with the query's label is relevant, because pairs formed by
    class make instance retrieval ill-posed. Equal similarities are ranked by gallery index
    (stable sort) so ties never flatter or punish a model at random. A query with no relevant
    item scores 0 rather than being dropped, so every query weighs the same.
    """
    if sim.ndim != 2:
        raise ValueError(f"sim must be 2-D, got shape {tuple(sim.shape)}")
    nq, ng = sim.shape
    if nq == 0 or ng == 0:
        raise ValueError("sim has no queries or no gallery items")
    rel = _relevance_mask(nq, ng, q_labels, g_labels, relevance)
    ks = defaults("eval")["ks"] if ks is None else ks
    sim = sim.detach().cpu()
    positions = torch.arange(1, ng + 1, dtype=torch.float64)
    hit_sums = {k: 0.0 for k in ks}
    ap_sum = 0.0
    for lo in range(0, nq, _QUERY_CHUNK):
        order = torch.sort(sim[lo:lo + _QUERY_CHUNK], dim=1, descending=True, stable=True).indices
        hits = torch.gather(rel[lo:lo + _QUERY_CHUNK], 1, order).double()  # relevance by rank
        for k in ks:
            hit_sums[k] += hits[:, :k].any(dim=1).sum().item()
        precision = hits.cumsum(dim=1) / positions
        ap = (precision * hits).sum(dim=1) / hits.sum(dim=1).clamp(min=1)
        ap_sum += ap.sum().item()
    out = {f"r{k}": hit_sums[k] / nq for k in ks}
    out["map"] = ap_sum / nq
    return out


def retrieval_metrics(za: torch.Tensor, zb: torch.Tensor, labels: torch.Tensor | None,
                      relevance: str, ks: Sequence[int] | None = None,
                      n_subsets: int | None = None, subset_size: int | None = None,
                      seed: int | None = None) -> dict[str, float]:
    """Both-direction retrieval between paired embeddings, averaged over random subsets.

    Subsets keep the gallery size fixed across test sets of different size (as in the paper),
    so scores stay comparable between tasks. With n <= subset_size every pair is used once.
    Settings left None take the schema's eval defaults.
    """
    given = {"ks": ks, "n_subsets": n_subsets, "subset_size": subset_size, "seed": seed}
    ec = {**defaults("eval"), **{k: v for k, v in given.items() if v is not None}}
    ks, n_subsets, subset_size, seed = (ec[k] for k in given)
    if za.ndim != 2 or zb.ndim != 2 or len(za) != len(zb):
        raise ValueError(f"za, zb must be paired (n, d) tensors, got {tuple(za.shape)}, "
                         f"{tuple(zb.shape)}")
    n = len(za)
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries for {n} pairs")
    if n <= subset_size:
        subsets = [torch.arange(n)]
    else:
        gen = torch.Generator().manual_seed(seed)
        # sorted so ties inside a subset still break by original index
        subsets = [torch.randperm(n, generator=gen)[:subset_size].sort().values
                   for _ in range(n_subsets)]
    za, zb = za.detach().cpu(), zb.detach().cpu()
    totals: dict[str, float] = {}
    for idx in subsets:
        lab = None if labels is None else labels.detach().cpu()[idx]
        sim = za[idx] @ zb[idx].T
        for direction, s in (("a2b", sim), ("b2a", sim.T)):
            for key, val in retrieval_scores(s, lab, lab, relevance, ks).items():
                name = f"{key}_{direction}"
                totals[name] = totals.get(name, 0.0) + val
    out = {key: val / len(subsets) for key, val in totals.items()}
    for key in [f"r{k}" for k in ks] + ["map"]:
        out[key] = (out[f"{key}_a2b"] + out[f"{key}_b2a"]) / 2
    return out


def zero_shot_accuracy(z: torch.Tensor, labels: torch.Tensor, class_emb: torch.Tensor,
                       class_ids: torch.Tensor) -> float:
    """Accuracy of argmax over z @ class_emb.T; class_ids maps prompt rows to labels.

    torch.argmax returns the first maximum, so ties go to the lowest prompt index.
    """
    if len(class_emb) != len(class_ids):
        raise ValueError(f"{len(class_emb)} class embeddings but {len(class_ids)} class ids")
    if len(z) != len(labels) or len(z) == 0:
        raise ValueError(f"need one label per embedding, got {len(z)} and {len(labels)}")
    pred = class_ids.cpu()[(z @ class_emb.T).argmax(dim=1).cpu()]
    return (pred == labels.cpu()).double().mean().item()


def accuracy_matrix(df: pd.DataFrame, metric: str, tasks: Sequence[str]) -> np.ndarray:
    """(T+1, T) matrix a[s, j] = `metric` on tasks[j] after step s, for ONE run.

    Missing entries become NaN so partially finished runs still report what they have;
    rows for tasks outside `tasks` are ignored. Duplicates or out-of-range steps mean the
    input is inconsistent, so they raise instead of being silently averaged or dropped.
    """
    runs = df["run"].unique()
    if len(runs) > 1:
        raise ValueError(f"accuracy_matrix needs rows of one run, got {len(runs)}: "
                         f"{sorted(map(str, runs))}")
    run = runs[0] if len(runs) else "<empty>"
    n_tasks = len(tasks)
    col = {name: j for j, name in enumerate(tasks)}
    rows = df[(df["metric"] == metric) & df["eval_task"].isin(col)]
    if rows.duplicated(["step", "eval_task"]).any():
        raise ValueError(f"run {run}: duplicate {metric!r} entries for a (step, eval_task)")
    bad = rows[(rows["step"] < 0) | (rows["step"] > n_tasks)]
    if len(bad):
        raise ValueError(f"run {run}: steps {sorted(bad['step'].unique())} outside 0..{n_tasks}")
    a = np.full((n_tasks + 1, n_tasks), np.nan)
    steps, cols = rows["step"].to_numpy(int), rows["eval_task"].map(col).to_numpy(int)
    a[steps, cols] = rows["value"].to_numpy(float)
    return a


def _nanmean(x: np.ndarray) -> float:
    """Mean of the finite entries; NaN (without a RuntimeWarning) when there are none."""
    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def _n_tasks(a: np.ndarray) -> int:
    """T of a (T+1, T) matrix; any other shape means rows and columns were mixed up."""
    if a.ndim != 2 or a.shape[0] != a.shape[1] + 1:
        raise ValueError(f"expected a (T+1, T) matrix, got shape {a.shape}")
    return a.shape[1]


def forgetting_per_task(a: np.ndarray) -> np.ndarray:
    """max_{s=j+1..T-1} a[s, j] - a[T, j] for j = 0..T-2: drop from each task's best score."""
    a = np.asarray(a, dtype=float)
    n_tasks = _n_tasks(a)
    out = np.full(max(n_tasks - 1, 0), np.nan)
    for j in range(n_tasks - 1):
        seen = a[j + 1:n_tasks, j]
        if not np.isnan(seen).all():
            out[j] = np.nanmax(seen) - a[n_tasks, j]
    return out


def continual_metrics(a: np.ndarray) -> dict[str, float]:
    """Standard continual-learning summaries of a (T+1, T) accuracy matrix (NaN-aware).

    Row s = after step s (s=0 is zero-shot), column j = task j, trained at step j+1.
    """
    a = np.asarray(a, dtype=float)
    n_tasks = _n_tasks(a)
    last = a[n_tasks]
    steps = range(1, n_tasks + 1)
    transfer = [a[s, j] for s in range(1, n_tasks) for j in range(s, n_tasks)]
    return {
        "final_avg": _nanmean(last),
        "avg_inc": _nanmean(np.array([_nanmean(a[s, :s]) for s in steps])),
        "bwt": _nanmean(np.array([last[j] - a[j + 1, j] for j in range(n_tasks - 1)])),
        "fwt": _nanmean(np.array([a[j, j] - a[0, j] for j in range(1, n_tasks)])),
        "forgetting": _nanmean(forgetting_per_task(a)),
        "mtil_transfer": _nanmean(np.array(transfer)),
        "mtil_avg": _nanmean(a[1:]),
        "mtil_last": _nanmean(last),
    }
