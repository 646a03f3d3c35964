"""`python -m cmcl <verb>`: one verb per pipeline rule, paths in, files out.

Snakemake rules call these with paths from the rule and the params sections they read (as
JSON), so every stage also runs by hand without Snakemake.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _json(text: str):
    """A --cfg: JSON (or @file), with the schema defaults its stage identity left out."""
    from cmcl.schema import complete

    try:
        obj = json.loads(Path(text[1:]).read_text() if text.startswith("@") else text)
    except (json.JSONDecodeError, OSError) as e:
        raise argparse.ArgumentTypeError(f"not JSON (or @file with JSON): {e}") from None
    return complete(obj) if isinstance(obj, dict) else obj


def cmd_corpus(a) -> None:
    from cmcl.corpora.builtin import BUILTINS
    from cmcl.settings import CorpusSettings

    c = CorpusSettings.of({"path": str(a.out), **a.cfg})  # the folder it fills: --out
    if c.builtin not in BUILTINS:
        raise SystemExit(f"corpus: no builtin corpus '{c.builtin}' ({sorted(BUILTINS)})")
    n = BUILTINS[c.builtin](a.out, c.test_fraction, c.seed)
    print(f"wrote {n} samples to {a.out}")


def cmd_shard(a) -> None:
    from cmcl.settings import ShardSettings
    from cmcl.shards import shard_task

    c, s = a.cfg, ShardSettings.of(a.cfg["shard"])
    n = shard_task(c["task"], c["corpus"], a.split, a.out, s.samples_per_shard,
                   s.max_per_class, workers=a.workers or s.workers,
                   max_shard_bytes=s.max_shard_bytes())
    print(f"{c['task']['name']}/{a.split}: {n} pairs -> {a.out}")


def cmd_embed(a) -> None:
    from cmcl.embed import embed_split
    from cmcl.settings import EmbedSettings

    e = EmbedSettings.of(a.cfg["embed"])
    n = embed_split(a.shards, a.out, e.encoders, e.batch_size, e.dtype,
                    max_shard_bytes=e.max_shard_bytes(), storage_dtype=e.storage_dtype)
    print(f"embedded {n} samples -> {a.out}")


def cmd_convert_unibind_centres(a) -> None:
    from cmcl.encoders.unibind import convert_centres

    n = convert_centres(a.src, a.dst)
    print(f"{n} classes' centres -> {a.dst} (name it as unibind:<checkpoint>,centres={a.dst})")


def cmd_import_features(a) -> None:
    from cmcl.corpora.features_h5 import import_task
    from cmcl.settings import ShardSettings

    c = a.cfg
    n = import_task(c["task"], c["corpus"], a.split, a.out,
                    ShardSettings.of(c["shard"]).max_per_class)
    print(f"{c['task']['name']}/{a.split}: imported {n} samples -> {a.out}")


def cmd_init(a) -> None:
    from cmcl.train import init_step

    init_step(a.cfg, a.method, a.seed, a.features, a.out)


def _train_cfg(a):
    """--cfg as the rule passes it, or built from a params file (for hand/accelerate launches),
    as a typed StepConfig."""
    from cmcl.settings import StepConfig

    if a.cfg is not None:
        return StepConfig.of(a.cfg)
    if a.params is None:
        raise SystemExit("train: give --cfg (JSON) or --params (a params.yaml)")
    from cmcl import stages
    from cmcl.config import load

    p = load(a.params, as_configfile=True)
    seq = a.sequence or next(iter(p["sequences"]))
    if seq not in p["sequences"]:
        raise SystemExit(f"train: --sequence {seq} is not declared in {a.params} "
                         f"({sorted(p['sequences'])})")
    if not 1 <= a.step <= len(p["sequences"][seq]):
        raise SystemExit(f"train: --step {a.step} outside 1..{len(p['sequences'][seq])} of "
                         f"sequence '{seq}' in {a.params}")
    return StepConfig.of(stages.train(p, seq, a.method, a.step).values)


def cmd_train(a) -> None:
    from cmcl.train import train_step

    cfg = _train_cfg(a)
    if a.checkpoint_every is not None:
        cfg = cfg.with_train(checkpoint_every=a.checkpoint_every)
    specs = cfg.task.get("tasks", [cfg.task])
    features = a.features or [f"data/features/{t['name']}/train" for t in specs]
    log = train_step(cfg, a.method, a.seed, a.step, cfg.task, features, a.prev, a.out)
    print(json.dumps({k: log[k] for k in ("step", "task", "seconds", "epoch_loss")}))


def cmd_evaluate(a) -> None:
    from cmcl.evaluate import evaluate_run, evaluate_step
    from cmcl.settings import EvalConfig

    c = EvalConfig.of(a.cfg)
    if a.out_dir:  # every step of a run in one process (the rule): one step<t>.parquet each
        dfs = evaluate_run(c, a.model, c.tasks, a.features, a.out_dir, c.sequence)
    elif len(a.model) == 1:
        dfs = [evaluate_step(c, a.model[0], c.tasks, a.features, a.out, c.sequence)]
    else:
        raise SystemExit("evaluate: --out takes one --model; use --out-dir for several steps")
    for df in dfs:
        print(df.pivot_table(index=["step", "eval_task"], columns="metric", values="value")
              .round(3).to_string())


def cmd_report(a) -> None:
    from cmcl.report import report_from_files

    report_from_files(a.cfg, a.evals, a.features or [], a.out_dir, a.resources, a.tuned)
    print(f"report: {Path(a.out_dir) / 'report.md'}")


def cmd_check(a) -> None:
    from cmcl.check import run_check

    if not run_check(a.metrics, a.cfg, a.expected, a.out):
        raise SystemExit(f"check: results deviate from {a.expected} (details in {a.out}); a "
                         "deliberate change? regenerate it with `python -m cmcl expect`")


def cmd_expect(a) -> None:
    import json as _json

    from cmcl.check import expect
    from cmcl.config import load

    expect(_json.loads(Path(a.metrics).read_text()), load(a.params), a.out)
    print(f"wrote {a.out}")


def cmd_compare(a) -> None:
    """Run-vs-run table in the terminal: method A (file A) against method B (file B)."""
    loaded = []
    for path in (a.metrics, a.metrics_b or a.metrics):
        per_seq = json.loads(Path(path).read_text())
        seq = a.sequence or next(iter(per_seq))
        if seq not in per_seq:
            raise SystemExit(f"compare: no sequence '{seq}' in {path} ({sorted(per_seq)})")
        loaded.append(per_seq[seq])
    ma, mb = loaded
    for name, m in ((a.a, ma), (a.b, mb)):
        if name not in m:
            raise SystemExit(f"compare: no method '{name}' in the metrics ({sorted(m)})")
    ea, eb = ma[a.a], mb[a.b]
    # default: every score the file summarises (map, R@k for its eval.ks, zero-shot)
    have = sorted({k[: -len("_final_avg")] for k in ea if k.endswith("_final_avg")})
    missing = [m for m in a.metric or () if m not in have]
    if missing:
        raise SystemExit(f"compare: no score {missing} in the metrics (they hold {have}: "
                         "R@k for each k of the run's eval.ks)")
    wanted = a.metric or have
    keys = [k for k in ea if not k.endswith(("_std", "_ci95")) and k != "n_seeds" and k in eb
            and any(k.startswith(f"{m}_") for m in wanted)]
    la, lb = f"{a.a}", f"{a.b}" + (f" ({a.metrics_b})" if a.metrics_b else "")
    print(f"{'metric':26s} {la:>18s} {lb:>18s} {'B - A':>8s}")
    def cell(e: dict, k: str) -> str:  # one seed has no spread: no "± 0.00"
        if e[k] is None:
            return "n/a"
        spread = f" ± {e.get(k + '_std') or 0:.2f}" if e.get("n_seeds", 2) > 1 else ""
        return f"{e[k]:.2f}{spread}"

    for k in keys:
        va, vb = ea[k], eb[k]
        sa, sb = cell(ea, k), cell(eb, k)
        diff = "" if va is None or vb is None else f"{vb - va:+.2f}"
        print(f"{k:26s} {sa:>18s} {sb:>18s} {diff:>8s}")


def cmd_sweep_worker(a) -> None:
    from cmcl.sweep import worker

    s = worker(a.cfg, a.features_root, a.journal, a.worker, a.out)
    print(f"worker {a.worker}: {len(s['trials'])} trials in {s['seconds']} s")


def cmd_sweep_best(a) -> None:
    from cmcl.sweep import best

    s = best(a.cfg, a.features_root, a.journal, a.out_dir, sources=a.sources)
    print(json.dumps({k: s[k] for k in ("study", "n_trials", "states", "best")}, indent=1))
    print(f"test objective of the best params: {s['test']['objective']:.4f}")


def cmd_resources(a) -> None:
    from cmcl.resources import collect

    table = collect(a.runs, a.out)
    print(f"{a.out}: {sum(map(len, table.values()))} runs measured")


def cmd_tune_export(a) -> None:
    from cmcl.tuning import export

    if len(a.methods) != len(a.summaries):
        raise SystemExit("tune-export: give one --summaries file per --methods name")
    workers = {m: sorted((Path(a.workers_root) / a.sequence / m).glob("worker*.json"))
               for m in a.methods}
    out = export(a.cfg, a.sequence, dict(zip(a.methods, a.summaries, strict=True)), a.out,
                 worker_files=workers)
    print(f"{a.out}: {len(out['record']['methods'])} methods tuned on {a.sequence}")


def cmd_methods(a) -> None:
    from cmcl.catalog import methods

    for name, info in methods().items():
        print(f"{name:12s} {info.description}\n{'':12s} [{info.citation}]")


def cmd_validate(a) -> None:
    from cmcl.config import check, compose, load, sources

    files = a.params or ["params.yaml"]
    if len(files) == 1:  # errors name the file itself, as they always have
        p = load(files[0], as_configfile=True)
    else:  # composed as the Snakefile composes `--configfile f1 f2 ...`
        p = check(compose(files), source=sources(files))
    names = " ".join(map(str, files))
    seqs = ", ".join(f"{s} ({len(t)} tasks)" for s, t in p["sequences"].items())
    print(f"{names}: ok as `snakemake --configfile {names}` runs it (sequences {seqs}; "
          f"methods {p['train']['methods']}; seeds {p['train']['seeds']})")


def cmd_verify(a) -> None:
    from cmcl.verify import DEFAULT_ROOTS, render, verify

    paths = a.paths or [p for p in DEFAULT_ROOTS if Path(p).exists()]
    rep = verify(paths)
    print(render(rep))
    if rep.damaged:
        raise SystemExit(1)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cmcl", description=__doc__)
    sub = ap.add_subparsers(dest="verb", required=True)

    def verb(name, fn, help_):
        p = sub.add_parser(name, help=help_)
        p.set_defaults(fn=fn)
        return p

    p = verb("corpus", cmd_corpus, "materialise a builtin corpus in the generic layout")
    p.add_argument("--cfg", type=_json, required=True, help="the corpus's params entry (JSON)")
    p.add_argument("--out", required=True)
    p = verb("shard", cmd_shard, "write a task split as WebDataset shards")
    p.add_argument("--cfg", type=_json, required=True, help='{"task":..,"corpus":..,"shard":..}')
    p.add_argument("--split", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, help="decoding processes (default: shard.workers)")
    p = verb("import-features", cmd_import_features,
             "pre-extracted HDF5 features (adapter features_h5) -> feature shards")
    p.add_argument("--cfg", type=_json, required=True, help='{"task":..,"corpus":..,"shard":..}')
    p.add_argument("--split", required=True)
    p.add_argument("--out", required=True)
    p = verb("embed", cmd_embed, "frozen encoders: shards -> feature shards")
    p.add_argument("--cfg", type=_json, required=True)
    p.add_argument("--shards", required=True)
    p.add_argument("--out", required=True)
    p = verb("convert-unibind-centres", cmd_convert_unibind_centres,
             "ONE-OFF, BY HAND: UniBind's class-centre pickle -> safetensors. THIS UNPICKLES "
             "<src> (unpickling can run any code the file names): only on the file from "
             "UniBind's release; pipelines read only <dst>")
    p.description = ("One-off conversion, run by hand, never by the pipeline. WARNING: this "
                     "UNPICKLES <src>, and unpickling can run any code the file names: use it "
                     "only on the centre file of UniBind's release. The pipeline reads only "
                     "the safetensors output (encoder spec unibind:<checkpoint>,centres=<dst>).")
    p.add_argument("src", help="centre_embs/<modality>_in_center_embeddings.pkl (UniBind)")
    p.add_argument("dst", help="output .safetensors (one (k, d) tensor per class label)")
    for name, fn, h in (("init", cmd_init, "create the step-0 model of a run"),
                        ("train", cmd_train, "train one step of a run")):
        p = verb(name, fn, h)
        p.add_argument("--cfg", type=_json, required=name == "init")
        if name == "train":
            p.add_argument("--params", help="build the config from this params.yaml instead")
            p.add_argument("--sequence", help="with --params: the sequence (default: the first)")
            p.add_argument("--checkpoint-every", type=int,
                           help="optimizer steps between preemption checkpoints (0: off)")
        p.add_argument("--method", required=True)
        p.add_argument("--seed", type=int, required=True)
        p.add_argument("--out", required=True)
        if name == "init":
            p.add_argument("--features", nargs="+", required=True, help="train feature dirs")
        else:
            p.add_argument("--step", type=int, required=True)
            p.add_argument("--features", nargs="+",
                           help="train feature dir(s) (default: data/features/<task>/train)")
            p.add_argument("--prev", required=True, help="step t-1 folder")
    p = verb("evaluate", cmd_evaluate, "evaluate steps of a run on every task's test split")
    p.add_argument("--cfg", type=_json, required=True)
    p.add_argument("--model", nargs="+", required=True, help="step folder(s) of one run")
    p.add_argument("--features", nargs="+", required=True, help="test feature dirs, task order")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="the Parquet file of one step")
    where.add_argument("--out-dir", help="a folder of step<t>.parquet, one per --model")
    p = verb("report", cmd_report, "metrics.json, plots and report.md from all evaluations")
    p.add_argument("--cfg", type=_json, required=True)
    p.add_argument("--evals", nargs="+", required=True)
    p.add_argument("--features", nargs="*", help="feature dirs (their meta.json: counts)")
    p.add_argument("--resources", help="reports/resources.json (what each run stores)")
    p.add_argument("--tuned", help="the tuned file the run uses (its record: how values were "
                   "obtained)")
    p.add_argument("--out-dir", required=True)
    p = verb("check", cmd_check, "compare metrics with the expected results (reproduction guard)")
    p.add_argument("--cfg", type=_json, required=True, help="the full params (JSON)")
    p.add_argument("--metrics", required=True)
    p.add_argument("--expected", required=True)
    p.add_argument("--out", required=True)
    p = verb("expect", cmd_expect, "record current metrics as the expected results")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--metrics", default="reports/metrics.json")
    p.add_argument("--out", required=True)
    p = verb("compare", cmd_compare, "print a method-vs-method (or run-vs-run) metrics table")
    p.add_argument("a", help="method A")
    p.add_argument("b", help="method B")
    p.add_argument("--metrics", default="reports/metrics.json")
    p.add_argument("--metrics-b", help="take B from another metrics.json (another experiment)")
    p.add_argument("--metric", nargs="+", help="score families, e.g. map r10 (default: all)")
    p.add_argument("--sequence", help="which sequence of the metrics (default: the first)")
    for name, fn, h in (("sweep-worker", cmd_sweep_worker, "run Optuna trials until n_trials"),
                        ("sweep-best", cmd_sweep_best, "best.yaml, figures, test scores")):
        p = verb(name, fn, h)
        p.add_argument("--cfg", type=_json, required=True, help="the full params (JSON)")
        p.add_argument("--features-root", default="data/features")
        p.add_argument("--journal", required=True, help="Optuna journal file of the study")
        if name == "sweep-worker":
            p.add_argument("--worker", type=int, default=0)
            p.add_argument("--out", required=True, help="this worker's summary (JSON)")
        else:
            p.add_argument("--out-dir", required=True)
            p.add_argument("--sources", type=json.loads, help='{"configfiles": [..], '
                           '"config_args": [..]} the pipeline ran with, for best.yaml\'s command')
    p = verb("resources", cmd_resources, "samples, state bytes, extra parameters per run")
    p.add_argument("--runs", nargs="+", required=True, help="final step folders of the runs")
    p.add_argument("--out", required=True)
    p = verb("tune-export", cmd_tune_export, "one tuned params override from the studies")
    p.add_argument("--cfg", type=_json, required=True, help="tune, train and budget (JSON)")
    p.add_argument("--sequence", required=True)
    p.add_argument("--methods", nargs="+", required=True)
    p.add_argument("--summaries", nargs="+", required=True, help="sweep-best summary.json")
    p.add_argument("--workers-root", default="results/tune", help="<seq>/<method>/worker*.json")
    p.add_argument("--out", required=True)
    verb("methods", cmd_methods, "list the registered continual-learning methods")
    p = verb("validate", cmd_validate, "check params files as `snakemake --configfile` "
             "composes them")
    p.add_argument("params", nargs="*", help="params files, merged in order "
                   "(default: params.yaml)")
    p = verb("verify", cmd_verify, "list artifacts whose files differ from the sha256 their "
             "producer recorded, and how to repair them")
    p.add_argument("paths", nargs="*", help="artifact folders or files (default: "
                   "data/shards data/features results/runs)")
    return ap


def os_error_line(e: OSError, args: argparse.Namespace) -> str:
    """One line for an OS-level failure: the file (or the verb's output) and what to do."""
    import errno
    import shutil

    target = e.filename or getattr(args, "out", None) or getattr(args, "out_dir", None)
    where = f"{target}: " if target else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        folder = Path(target or ".").resolve()
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        free = shutil.disk_usage(folder).free / 1e9
        what = "no space left on the device" if e.errno == errno.ENOSPC else "disk quota exceeded"
        return (f"{where}{what} ({free:.2f} GB free on {folder}); nothing was left under the "
                "output's name: free space (or move data/ and results/ to a larger disk) and "
                "rerun")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where}{e.strerror}: make it writable (or run where you may write) and rerun"
    return f"{where}{e.strerror or e}"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"cmcl {args.verb}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # disk full, permissions: a line, not a traceback
        print(f"cmcl {args.verb}: error: {os_error_line(e, args)}", file=sys.stderr)
        return 1
    return 0
