"""Turn long-format evaluation results into DVC metrics, figures and a Markdown report.

Every statistic is computed per run (one run = one seed) and only then averaged across seeds,
so the reported std is the seed-to-seed spread, as in the paper.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cmcl.io import atomic_path, write_json
from cmcl.metrics import accuracy_matrix, continual_metrics
from cmcl.report_tuning import markdown_resources, markdown_tuning
from cmcl.settings import LossSettings, ReportSettings, relevance
from cmcl.tuning import read_tuned

REQUIRED_COLUMNS = ("sequence", "run", "method", "seed", "step", "eval_task", "metric", "value")
STATS = ("final_avg", "avg_inc", "bwt", "fwt", "forgetting", "mtil_transfer", "mtil_avg")
TASK_KEYS = ("name", "corpus", "modalities", "pairing")  # relevance: settings.relevance
RELEVANCE_TEXT = {"instance": "instance (hit = paired item)",
                  "label": "label-aware (hit = same class)"}


def collect(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Concatenate eval Parquet files, failing early on a file that lacks the schema."""
    frames = []
    for path in paths:
        frame = pd.read_parquet(path)
        missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: missing required columns {missing}")
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=list(REQUIRED_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def _mean_std(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and std over finite values; ddof=1 needs two seeds, one seed gives std 0."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1 if x.size > 1 else 0))


def _ci95(values: Sequence[float]) -> float:
    """Half-width of the 95% t-interval of the seed mean (NaN with fewer than two seeds)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size < 2:
        return math.nan
    return float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))


def _pct(x: float) -> float | None:
    return None if math.isnan(x) else round(100 * x, 4)


def _cell_stats(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Element-wise seed mean/std of a (runs, T+1, T) stack of matrices."""
    pairs = np.apply_along_axis(lambda v: np.array(_mean_std(v)), 0, stack)
    return pairs[0], pairs[1]


def _validate(df: pd.DataFrame, tasks: Sequence[Mapping], main_metric: str) -> None:
    if df.empty:
        raise ValueError("build_report: no evaluation rows (empty DataFrame)")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"build_report: DataFrame is missing columns {missing}")
    if not tasks:
        raise ValueError("build_report: the task sequence is empty")
    for i, task in enumerate(tasks):
        absent = [k for k in TASK_KEYS if k not in task]
        if absent:
            raise ValueError(f"build_report: task {i} is missing keys {absent}")
    names = [t["name"] for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"build_report: duplicate task names in {names}")
    if df["method"].isna().any():
        raise ValueError("build_report: some rows have no method")
    for method, rows in df.groupby("method"):
        hit = rows[(rows["metric"] == main_metric) & rows["eval_task"].isin(names)]
        if hit.empty:
            raise ValueError(f"build_report: method {method!r} has no {main_metric!r} rows "
                             f"for tasks {names}")


def _file_stem(method: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", method)


def _step_labels(names: Sequence[str]) -> list[str]:
    return ["0 (untrained)"] + [f"{s}: {n}" for s, n in enumerate(names, start=1)]


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)  # render with Agg explicitly: no display, no global pyplot state
    return fig


def _save_png(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _save_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _plot_matrix(mean: np.ndarray, names: Sequence[str], title: str, path: Path) -> None:
    n_tasks = len(names)
    fig = _new_figure(max(4.5, 1.3 * n_tasks + 3), max(3.0, 0.5 * (n_tasks + 1) + 1.5))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(mean), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for (s, j), v in np.ndenumerate(mean):
        text = "n/a" if np.isnan(v) else f"{v:.1f}"
        ax.text(j, s, text, ha="center", va="center", color="white" if v < 60 else "black")
    ax.set_xticks(range(n_tasks), names, rotation=30, ha="right")
    ax.set_yticks(range(n_tasks + 1), _step_labels(names))
    ax.set(xlabel="evaluated task", ylabel="after step", title=title)
    fig.colorbar(image, ax=ax, label="%")
    _save_png(fig, path)


def _plot_over_steps(curves: pd.DataFrame, names: Sequence[str], metric: str, path: Path) -> None:
    ncols = min(len(names), 3)
    nrows = math.ceil(len(names) / ncols)
    fig = _new_figure(4.0 * ncols, 3.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
    for j, (ax, name) in enumerate(zip(axes, names, strict=False)):
        for method, rows in curves[curves["task"] == name].groupby("method", sort=True):
            (line,) = ax.plot(rows["step"], rows["value"], marker="o", label=method)
            band = rows["std"].fillna(0)
            ax.fill_between(rows["step"], rows["value"] - band, rows["value"] + band,
                            color=line.get_color(), alpha=0.2)
        ax.axvline(j + 1, color="grey", linestyle=":", linewidth=1)  # step that trains it
        ax.set(title=name, xlabel="step", ylabel=f"{metric} (%)")
        ax.set_xticks(range(len(names) + 1))
    for ax in axes[len(names):]:
        ax.set_visible(False)
    axes[0].legend(fontsize="small")
    _save_png(fig, path)


def _plot_stability(points: pd.DataFrame, metric: str, path: Path) -> None:
    """Final average vs BWT with seed-std error bars; a method without BWT (joint training)
    is drawn as a horizontal reference line at its final average."""
    fig = _new_figure(5.5, 4.2)
    ax = fig.add_subplot()
    cont = points[points["bwt"].notna()]
    ref = points[points["bwt"].isna() & points["final_avg"].notna()]
    std = {k: cont[f"{k}_std"].fillna(0) if f"{k}_std" in cont else None
           for k in ("bwt", "final_avg")}
    ax.errorbar(cont["bwt"], cont["final_avg"], xerr=std["bwt"], yerr=std["final_avg"],
                fmt="o", capsize=3, elinewidth=1)
    for row in cont.itertuples():
        ax.annotate(row.method, (row.bwt, row.final_avg), xytext=(4, 4),
                    textcoords="offset points")
    for row in ref.itertuples():
        ax.axhline(row.final_avg, color="tab:red", linestyle="--", linewidth=1)
        ax.annotate(f"{row.method} (reference)", (0, row.final_avg), xytext=(-4, 3),
                    textcoords="offset points", ha="right", color="tab:red", fontsize="small",
                    xycoords=("axes fraction", "data"))
    ax.axvline(0, color="grey", linestyle=":", linewidth=1)  # right of it: no forgetting
    ax.margins(0.15)  # room for the point labels
    ax.set(xlabel=f"BWT of {metric} (%)", ylabel=f"final average {metric} (%)",
           title="Stability vs plasticity (error bars: std over seeds)")
    _save_png(fig, path)


def _fmt(entry: Mapping, key: str, one_seed: bool) -> str:
    mean, std = entry.get(key), entry.get(f"{key}_std")
    if mean is None:
        return "n/a"
    return f"{mean:.2f}" if one_seed or std is None else f"{mean:.2f} ± {std:.2f}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


RECALL = re.compile(r"r\d+")  # R@k score names, k from eval.ks


def _by_k(names) -> list[str]:
    """The R@k score names among `names`, by k."""
    return sorted((m for m in set(names) if RECALL.fullmatch(m)), key=lambda m: int(m[1:]))


def _recalls(entry: Mapping) -> list[str]:
    """The R@k names summarised in a method's metrics entry, by k."""
    return _by_k(k[: -len("_final_avg")] for k in entry if k.endswith("_final_avg"))


def _trivial_recall(tasks: Sequence[Mapping], widest: str | None) -> str:
    """A warning when the widest R@k is 100 by construction: a test split of at most k pairs
    puts every item in the top k."""
    if widest is None:
        return ""
    k = int(widest[1:])
    small = [f"{t['name']} ({t['pairs']['test']} pairs)" for t in tasks
             if isinstance(t.get("pairs", {}).get("test"), int) and t["pairs"]["test"] <= k]
    return (f" R@{k} is 100 by construction on a task whose test split holds at most {k} pairs: "
            f"{', '.join(small)}." if small else "")


def _markdown_sequence(seq: str, tasks: Sequence[Mapping], metrics: dict,
                       means: dict[str, np.ndarray], main_metric: str,
                       zs_tasks: Sequence[str]) -> list[str]:
    names = [t["name"] for t in tasks]
    out = [f"## Sequence `{seq}`", "", "### Tasks", ""]
    sizes = any("pairs" in t for t in tasks)
    out += _md_table(
        ["Step", "Task", "Corpus", "Modalities", "Pairing", "Retrieval relevance"]
        + (["Pairs train/test", "Rejected samples"] if sizes else []),
        [[str(s), t["name"], str(t["corpus"]), " ↔ ".join(map(str, t["modalities"])),
          str(t["pairing"]), RELEVANCE_TEXT.get(relevance(t), relevance(t))]
         + ([f"{t['pairs'].get('train', '?')}/{t['pairs'].get('test', '?')}",
             str(t.get("rejected", 0))] if sizes else [])
         for s, t in enumerate(tasks, start=1)])
    recalls = _recalls(next(iter(metrics.values()), {}))
    widest = recalls[-1] if recalls else None
    header = ["Method", "Acc", "BWT", *(f"R@{r[1:]}" for r in recalls)] + (
        [f"BWT_R{widest[1:]}"] if widest else [])
    keys = [f"{main_metric}_final_avg", f"{main_metric}_bwt",
            *(f"{r}_final_avg" for r in recalls)] + ([f"{widest}_bwt"] if widest else [])
    has_zs = bool(zs_tasks)
    if has_zs:
        header.append("ZS-Acc")
        keys.append("zs_acc_final_avg")
    rows = [[m] + [_fmt(e, k, e["n_seeds"] == 1) for k in keys] for m, e in metrics.items()]
    seeds = sorted({e["n_seeds"] for e in metrics.values()})
    if len(seeds) == 1:
        seed_text = f"{seeds[0]} seed" + ("s" if seeds[0] > 1 else "")
    else:
        seed_text = "seeds per method: " + ", ".join(
            f"{m} {e['n_seeds']}" for m, e in metrics.items())
    out += ["", "### Main results", ""] + _md_table(header, rows) + [
        "",
        f"Acc is the final average of `{main_metric}` over all {len(names)} tasks after the "
        f"last step; BWT is its backward transfer; R@k are final averages (mean of both "
        f"directions)" + (f", BWT_R{widest[1:]} the backward transfer of R@{widest[1:]}"
                          if widest else "")
        + (", ZS-Acc the final average zero-shot accuracy" if has_zs else "")
        + (f" over the {len(zs_tasks)} of {len(names)} tasks with class prompts "
           f"({', '.join(zs_tasks)}; the others have no class names or prompt features)"
           if has_zs and len(zs_tasks) < len(names) else "")
        + f". Values in percent, mean ± std over {seed_text}." + _trivial_recall(tasks, widest),
        "", "### Figures", "",
        f"![Stability vs plasticity](plots/{seq}/stability_plasticity.png)", "",
        f"![{main_metric} over steps](plots/{seq}/scores_over_steps.png)", "",
        "### Accuracy matrices", "",
        f"`{main_metric}` in percent, mean over seeds; rows = after step, columns = task.", ""]
    for method, mean in means.items():
        out += [f"#### {method}", "",
                f"![{method}](plots/{seq}/acc_matrix_{_file_stem(method)}.png)", ""]
        cells = [[label] + ["n/a" if np.isnan(v) else f"{v:.2f}" for v in row]
                 for label, row in zip(_step_labels(names), mean, strict=True)]
        out += _md_table(["Step"] + names, cells) + [""]
    return out


def _markdown_overview(metrics: dict, main_metric: str) -> list[str]:
    """Methods x sequences at a glance (only when the matrix has several sequences)."""
    seqs = list(metrics)
    methods = list(dict.fromkeys(m for s in seqs for m in metrics[s]))
    rows = [[m] + [" / ".join(_fmt(metrics[s][m], k, True) if m in metrics[s] else "n/a"
                              for k in (f"{main_metric}_final_avg", f"{main_metric}_bwt"))
                   for s in seqs] for m in methods]
    return ["## Overview", "", f"Final average `{main_metric}` / its BWT (percent, seed mean) "
            "per sequence.", ""] + _md_table(["Method"] + seqs, rows) + [""]


def _sequence_stats(df: pd.DataFrame, tasks: Sequence[Mapping], plots: Path,
                    main_metric: str, scores: Sequence[str] | None = None
                    ) -> tuple[dict, dict, list[dict], list[dict]]:
    """One sequence: per-method metrics, mean matrices, curve and scatter points, and the
    per-method matrix plots under `plots`."""
    _validate(df, tasks, main_metric)
    names = [t["name"] for t in tasks]
    present = set(df["metric"])
    if scores is None:  # as the rows have them: map, R@k by k, zero-shot
        scores = ["map", *_by_k(present), "zs_acc"]
    missing = [m for m in scores if m not in present and m != "zs_acc"]  # zs: text tasks only
    if missing:
        raise ValueError(f"build_report: no evaluation rows of metric(s) {missing} (eval.ks "
                         f"names them; the rows hold {sorted(present)}): re-run evaluate")
    metric_names = [m for m in dict.fromkeys((main_metric, *scores)) if m in present]
    methods = sorted(df["method"].unique(), key=str)
    stems = [_file_stem(str(m)) for m in methods]
    if len(set(stems)) != len(stems):
        raise ValueError(f"build_report: method names collide as file names: {methods}")

    metrics: dict[str, dict] = {}
    means: dict[str, np.ndarray] = {}
    curves, points = [], []
    for method in methods:
        rows = df[df["method"] == method]
        runs = sorted(rows["run"].unique(), key=str)
        entry: dict = {}
        mats = {metric: [accuracy_matrix(rows[rows["run"] == r], metric, names) for r in runs]
                for metric in metric_names}
        for metric, per_metric in mats.items():
            per_run = [continual_metrics(a) for a in per_metric]
            for stat in STATS:
                vals = [p[stat] for p in per_run]
                mean, std = _mean_std(vals)
                entry[f"{metric}_{stat}"], entry[f"{metric}_{stat}_std"] = _pct(mean), _pct(std)
                entry[f"{metric}_{stat}_ci95"] = _pct(_ci95(vals))
        entry["n_seeds"] = len(runs)
        mean_m, std_m = _cell_stats(100 * np.stack(mats[main_metric]))
        metrics[str(method)] = entry
        means[str(method)] = mean_m
        for (s, j), v in np.ndenumerate(mean_m):
            curves.append(dict(method=method, task=names[j], step=s, value=v, std=std_m[s, j]))
        points.append(dict(method=method, final_avg=entry[f"{main_metric}_final_avg"],
                           final_avg_std=entry[f"{main_metric}_final_avg_std"],
                           bwt_std=entry[f"{main_metric}_bwt_std"],
                           bwt=entry[f"{main_metric}_bwt"]))
        long = pd.DataFrame([dict(step=s, task=names[j], value=v)
                             for (s, j), v in np.ndenumerate(mean_m)])
        stem = f"acc_matrix_{_file_stem(str(method))}"  # not with_suffix: names may hold "."
        _save_csv(long, plots / f"{stem}.csv")
        _plot_matrix(mean_m, names, f"{method}: {main_metric} (%)", plots / f"{stem}.png")
    return metrics, means, curves, points


def _markdown_variants(variants: Mapping[str, Mapping]) -> list[str]:
    """What each method variant in the tables runs: its method and the options it sets."""
    rows = [[name, str(v["method"]),
             ", ".join(f"{k}: {json.dumps(x)}" for k, x in sorted(v.get("set", {}).items()))
             or "(the method's options)", v.get("description", "")]
            for name, v in variants.items()]
    return ["## Method variants", "", "Rows named after a variant run its method with these "
            "options (over `methods.<method>`) and train settings.", ""] + _md_table(
        ["Variant", "Method", "Options and train settings", "Description"], rows) + [""]


def _markdown_settings(s: Mapping) -> list[str]:
    """The settings every number below was obtained with (cmcl.stages.run_settings)."""
    def kv(d: Mapping) -> str:
        return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in d.items())

    loss = LossSettings.of(s["loss"])
    out = ["## Settings", "",
           f"- Model: {kv(s['model'])}.",
           f"- Loss: InfoNCE, {kv(loss.nce())} (preset {loss.preset}).",
           "- Encoders (frozen): " + ", ".join(f"{m} `{e}`" for m, e in s["encoders"].items())
           + (f"; tasks {', '.join(s['imported'])} use imported features (features_h5)"
              if s.get("imported") else "") + ".",
           f"- Training, shared: {kv(s['train'])}."]
    if s.get("methods"):
        out += ["- A method's own training settings (overrides, variants, tuned lr), which win: "
                + "; ".join(f"{m} {kv(d)}" for m, d in s["methods"].items()) + "."]
    out += [f"- Tuned values: `{s['tuned']}` (methods' options and lr; see each sequence's "
            "tuning record)." if s.get("tuned") else "- Tuned values: none (schema and "
            "params defaults)."]
    return out + [""]


def _markdown_how(seq: str, methods: list[str], main_metric: str,
                  resources: Mapping | None, tuning: Mapping | None) -> list[str]:
    """The tuning record (when the run uses a file tuned on this sequence) and resources."""
    out = []
    if tuning and tuning.get("sequence") == seq:
        out += markdown_tuning(tuning, methods, main_metric)
    elif tuning:
        out += [f"Methods' options and lr come from the tuned file, tuned on sequence "
                f"`{tuning.get('sequence')}`, not on `{seq}`.", ""]
    if resources and seq in resources:
        out += markdown_resources(resources[seq], methods)
    return out


def build_report(df: pd.DataFrame, sequences: Mapping[str, Sequence[Mapping]],
                 out_dir: str | Path, main_metric: str = "map",
                 variants: Mapping[str, Mapping] | None = None,
                 resources: Mapping | None = None, tuning: Mapping | None = None,
                 metric_names: Sequence[str] | None = None,
                 settings: Mapping | None = None) -> dict:
    """Write metrics.json, plots/ and report.md under out_dir; return the metrics dict.

    `metric_names`: the per-task scores to summarise (cmcl.stages.metric_names: R@k for each
    eval.ks); None takes those the rows hold.

    metrics.json holds {sequence: {method: {"<metric>_<stat>": mean, "..._std": std,
    "n_seeds": k}}} in percent so DVC diffs read like the paper's tables. Figures of a sequence
    go to plots/<sequence>/; the CSVs for `dvc plots` cover every sequence (a column says which).
    """
    if not sequences:
        raise ValueError("build_report: no sequence given")
    if "sequence" not in df.columns:
        raise ValueError("build_report: DataFrame is missing columns ['sequence']")
    unknown = sorted(set(df["sequence"]) - set(sequences), key=str)
    if unknown:
        raise ValueError(f"build_report: evaluations of undeclared sequences {unknown} "
                         f"(declared: {sorted(sequences)})")
    out_dir = Path(out_dir)
    metrics, text, curves, points = {}, [], [], []
    for seq, tasks in sequences.items():
        rows = df[df["sequence"] == seq]
        if rows.empty:
            raise ValueError(f"build_report: no evaluation rows for sequence '{seq}'")
        plots = out_dir / "plots" / seq
        m, means, c, p = _sequence_stats(rows, tasks, plots, main_metric, metric_names)
        metrics[seq] = m
        c_df, p_df = pd.DataFrame(c), pd.DataFrame(p).astype(
            {"final_avg": float, "bwt": float, "final_avg_std": float, "bwt_std": float})
        names = [t["name"] for t in tasks]
        _plot_over_steps(c_df, names, main_metric, plots / "scores_over_steps.png")
        _plot_stability(p_df, main_metric, plots / "stability_plasticity.png")
        curves.append(c_df.assign(sequence=seq))
        points.append(p_df.assign(sequence=seq))
        zs = set(rows.loc[rows["metric"] == "zs_acc", "eval_task"])
        text += _markdown_sequence(seq, tasks, m, means, main_metric,
                                   [n for n in names if n in zs])
        text += _markdown_how(seq, list(m), main_metric, resources, tuning)
    _save_csv(pd.concat(curves, ignore_index=True), out_dir / "plots" / "scores_over_steps.csv")
    _save_csv(pd.concat(points, ignore_index=True),
              out_dir / "plots" / "stability_plasticity.csv")
    write_json(out_dir / "metrics.json", metrics)
    head = ["# Continual multimodal contrastive learning: evaluation report", ""]
    if len(sequences) > 1:
        head += _markdown_overview(metrics, main_metric)
    if variants:
        head += _markdown_variants(variants)
    if settings:
        head += _markdown_settings(settings)
    md = "\n".join(head + text)
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(md + "\n")
    render_html(md, out_dir, out_dir / "report.html")
    return metrics


HTML_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%}"""


def render_html(markdown_text: str, base: Path, out: Path) -> None:
    """report.md as one self-contained HTML file (figures inlined), for mail and browsers."""
    import base64

    from markdown_it import MarkdownIt

    def inline(match: re.Match) -> str:
        png = base / match.group(2)
        data = base64.b64encode(png.read_bytes()).decode() if png.exists() else ""
        return f"{match.group(1)}(data:image/png;base64,{data})"

    body = MarkdownIt("commonmark").enable("table").render(
        re.sub(r"(!\[[^\]]*\])\(([^)]+\.png)\)", inline, markdown_text))
    with atomic_path(out) as tmp:
        tmp.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>cmcl report"
                       f"</title><style>{HTML_STYLE}</style></head><body>{body}</body></html>\n")


def eval_files(paths: Sequence[str | Path]) -> list[Path]:
    """Eval Parquet files as given; a run's folder (rule evaluate) as its steps in order."""
    out: list[Path] = []
    for p in map(Path, paths):
        steps = sorted(p.glob("step*.parquet"), key=lambda f: int(f.stem[4:]))
        out += steps if p.is_dir() else [p]
    return out


def report_from_files(cfg: Mapping, evals: Sequence[str | Path], features: Sequence[str | Path],
                      out_dir: str | Path, resources: str | Path | None = None,
                      tuned: str | Path | None = None) -> dict:
    """The report stage (cmcl.stages.report's values in `cfg`) from the files the rule names:
    eval folders, feature folders (pair and rejected counts), resources and the tuned file."""
    df = collect(eval_files(evals))
    sequences = {s: [dict(t) for t in tasks] for s, tasks in cfg["sequences"].items()}
    for d in features:  # pair counts and rejected samples, from the feature metadata
        meta = json.loads((Path(d) / "meta.json").read_text())
        for t in (t for tasks in sequences.values() for t in tasks if t["name"] == meta["task"]):
            t.setdefault("pairs", {})[meta["split"]] = meta["count"]
            t["rejected"] = max(t.get("rejected", 0), meta.get("rejected", 0))
    used = json.loads(Path(resources).read_text()) if resources else None
    tuning = read_tuned(tuned).get("record") if tuned else None  # how tuned values were got
    out = Path(out_dir)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    try:
        main = ReportSettings.of(cfg.get("report")).main_metric
        return build_report(df, sequences, out, main,
                            cfg.get("variants"), used, tuning, cfg.get("metrics"),
                            cfg.get("settings"))
    except BaseException:  # e.g. disk full: no half report (CSVs, figures) of this run stays
        for p in out.rglob("*"):
            if p.is_file() and before.get(p) != p.stat().st_mtime_ns:
                p.unlink()
        raise
