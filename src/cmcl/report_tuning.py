"""Report sections that say how each number was obtained: the tuning record and the resources.

The tuned file's `record` (written by `snakemake tune`, see cmcl.tuning) gives per method its
search space, the trials, the chosen values, the validation objective and the seed-1 test
scores of the defaults and of the tuned values; reports/resources.json what each run stores.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence


def _num(x: float) -> str:
    return f"{x:.3g}" if isinstance(x, float) else json.dumps(x)


def space_text(space: Mapping) -> str:
    """`lambda ∈ [1, 1e+05] log; stream_epochs ∈ {all, first}`: a space in one cell."""
    parts = []
    for key, spec in space.items():
        if spec["type"] == "categorical":
            parts.append(f"{key} ∈ {{{', '.join(map(str, spec['choices']))}}}")
        else:
            scale = " log" if spec.get("log") else ""
            kind = " int" if spec["type"] == "int" else ""
            parts.append(f"{key} ∈ [{_num(spec['low'])}, {_num(spec['high'])}]{kind}{scale}")
    return "; ".join(parts)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def markdown_tuning(record: Mapping, methods: Sequence[str], main_metric: str) -> list[str]:
    """The search of every method and its outcome, then defaults vs tuned on test."""
    obj, budget = record["objective"], (record.get("budget") or {}).get("samples")
    per = record["methods"]
    rows, side = [], []
    for m in methods:
        r = per.get(m)
        if r is None:
            rows.append([m, "not tuned", "", "", "", ""])
            continue
        states = r["trials"]
        best = ", ".join(f"{k}: {_num(v)}" for k, v in sorted(r["best"].items()))
        rows.append([m, space_text(r["space"] or {}), best,
                     f"{states.get('COMPLETE', 0)} / {states.get('PRUNED', 0)}",
                     f"{r['validation']:.4f}",
                     f"{r['test']['objective']:.4f}" if r.get("test") else "n/a"])
        d, t = r.get("default_test") or {}, r.get("test") or {}
        gain = (t["final_avg"] - d["final_avg"]) if d and t else None
        side.append([m, _pct(d.get("final_avg")), _pct(d.get("bwt")), _pct(t.get("final_avg")),
                     _pct(t.get("bwt")), "n/a" if gain is None else f"{100 * gain:+.2f}"])
    worker_s = sum(r.get("worker_s", 0) for r in per.values())
    out = ["### How each number was obtained", "",
           f"Every method was tuned with the same search budget: {record['n_trials']} Optuna "
           f"trials (TPE after random start-up trials, median pruning at task boundaries), "
           f"one study per method, in the method's own search space (declared in its file) "
           f"plus the shared `train.lr`. Objective: final average `{obj['metric']}` + "
           f"{obj['bwt_weight']} × BWT on validation carved from each task's training split "
           f"({record['val_fraction']:.0%}), seed {record['seed']}; the test split was never "
           "seen while tuning."
           + (f" Equal memory: {budget} stored samples for every method that replays data."
              if budget else "")
           + (f" Trials took {worker_s:.0f} s of worker time in all." if worker_s else ""),
           "", *_table(["Method", "Search space", "Chosen values", "Trials complete / pruned",
                        "Validation objective", "Test objective (seed 1)"], rows), "",
           "#### Defaults vs tuned", "",
           f"Test scores of one seed ({record['seed']}), final average `{main_metric}` and BWT "
           "in percent, with the method's default options and lr, and with the chosen values "
           "(the main table above is the tuned run over all seeds).", "",
           *_table(["Method", "Acc default", "BWT default", "Acc tuned", "BWT tuned",
                    "Δ Acc"], side), ""]
    return out


def markdown_resources(resources: Mapping, methods: Sequence[str]) -> list[str]:
    """Samples, bytes of method state and extra trainable parameters of each run."""
    rows = [[m, str(r["samples"]), f"{r['state_bytes'] / 1024:.1f}", str(r["extra_params"])]
            for m in methods if (r := resources.get(m)) is not None]
    return ["### Resources", "",
            "What each method stores after the last step (mean over seeds), measured from the "
            "saved state: replayed samples, bytes of its state (buffers, Fisher matrices, "
            "covariances, Gaussians, adapters) and trainable parameters added to the heads.",
            "", *_table(["Method", "Samples stored", "State (KiB)", "Extra parameters"], rows),
            ""]
