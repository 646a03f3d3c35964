"""Report tests on a synthetic run set whose continual metrics are known in advance."""

import json

import pandas as pd
import pytest
from PIL import Image

from cmcl.report import build_report, collect

TASKS = [
    {"name": "coco", "corpus": "mscoco", "modalities": ["text", "image"], "pairing": "sample",
     "relevance": "instance"},
    {"name": "clotho", "corpus": "clotho", "modalities": ["text", "audio"], "pairing": "sample",
     "relevance": "instance"},
    {"name": "esc", "corpus": "esc50", "modalities": ["audio", "image"], "pairing": "class",
     "relevance": "label"},
]
NAMES = [t["name"] for t in TASKS]
SCALE = {"map": 1.0, "r1": 0.5, "r5": 0.8, "r10": 0.9}


def _map_value(method: str, s: int, j: int) -> float:
    """0.1 before training, 0.8 right after; "ft" then loses 0.1 per later step, "dns" none."""
    if s <= j:
        return 0.1
    return 0.8 - (0.1 * (s - j - 1) if method == "ft" else 0.0)


def _synthetic(seeds=(0, 1), sequence="s", names=NAMES) -> pd.DataFrame:
    rows = []
    for method in ("dns", "ft"):
        for seed in seeds:
            offset = 0.01 if seed == 0 else -0.01  # cancels in BWT, gives a known std
            for s in range(len(names) + 1):
                for j, task in enumerate(names):
                    base = _map_value(method, s, j) + offset
                    vals = {m: base * k for m, k in SCALE.items()}
                    if task == "esc":  # only the class-labelled task has zero-shot accuracy
                        vals["zs_acc"] = base
                    rows += [dict(sequence=sequence, run=f"{method}_s{seed}", method=method,
                                  seed=seed, step=s, eval_task=task, metric=m, value=v)
                             for m, v in vals.items()]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    return out, build_report(_synthetic(), {"s": TASKS}, out)


def test_all_files_written_and_pngs_valid(built):
    out, _ = built
    plots = out / "plots"
    for name in ["scores_over_steps", "stability_plasticity"]:
        assert (plots / f"{name}.csv").stat().st_size > 0
    for name in ["acc_matrix_dns", "acc_matrix_ft", "scores_over_steps", "stability_plasticity"]:
        png = plots / "s" / f"{name}.png"
        with Image.open(png) as img:
            img.verify()
        with Image.open(png) as img:
            assert img.format == "PNG" and img.width >= 400 and img.height >= 200
    assert (out / "metrics.json").exists() and (out / "report.md").exists()


def test_metrics_json_has_planted_values(built):
    out, metrics = built
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert list(metrics) == ["s"]
    ft, dns = metrics["s"]["ft"], metrics["s"]["dns"]
    assert ft["n_seeds"] == 2
    assert ft["map_bwt"] == pytest.approx(-15.0)  # (0.6-0.8 + 0.7-0.8) / 2
    assert ft["map_bwt_std"] == pytest.approx(0.0, abs=1e-6)
    assert ft["map_final_avg"] == pytest.approx(70.0)
    assert ft["map_final_avg_std"] == pytest.approx(1.4142, abs=1e-4)  # seeds at 71, 69
    assert ft["map_final_avg_ci95"] == pytest.approx(12.7062 * 1.4142 / 2 ** 0.5, rel=1e-3)
    assert ft["map_forgetting"] == pytest.approx(15.0)
    assert ft["r10_bwt"] == pytest.approx(-13.5)
    assert ft["zs_acc_final_avg"] == pytest.approx(80.0)  # only "esc" has zs_acc
    assert dns["map_bwt"] == pytest.approx(0.0, abs=1e-6)
    assert dns["map_fwt"] == pytest.approx(0.0, abs=1e-6)
    assert dns["map_mtil_transfer"] == pytest.approx(10.0)


def test_csvs_have_expected_layout(built):
    plots = built[0] / "plots"
    acc = pd.read_csv(plots / "s" / "acc_matrix_ft.csv")
    assert list(acc.columns) == ["step", "task", "value"] and len(acc) == 12
    last = acc[(acc["step"] == 3) & (acc["task"] == "coco")]["value"].item()
    assert last == pytest.approx(60.0)
    curves = pd.read_csv(plots / "scores_over_steps.csv")
    assert list(curves.columns) == ["method", "task", "step", "value", "std", "sequence"]
    assert len(curves) == 2 * 3 * 4
    sp = pd.read_csv(plots / "stability_plasticity.csv").set_index("method")
    assert sp.loc["ft", "bwt"] == pytest.approx(-15.0)
    assert sp.loc["dns", "final_avg"] == pytest.approx(80.0)


def test_report_markdown_tables(built):
    text = (built[0] / "report.md").read_text()
    assert "| Method | Acc | BWT | R@1 | R@5 | R@10 | BWT_R10 | ZS-Acc |" in text
    lines = text.splitlines()
    for method in ("dns", "ft"):
        assert sum(line.startswith(f"| {method} |") for line in lines) == 1
    ft_row = next(line for line in lines if line.startswith("| ft |"))
    assert "70.00 ± 1.41" in ft_row and "-15.00" in ft_row
    assert "label-aware (hit = same class)" in text
    assert "(plots/s/stability_plasticity.png)" in text and "(plots/s/acc_matrix_ft.png)" in text
    assert "## Sequence `s`" in text and "## Overview" not in text  # one sequence: no overview
    assert "2 seed" in text and "| 0 (untrained) |" in text and "| 3: esc |" in text


def test_single_seed_omits_std(tmp_path):
    metrics = build_report(_synthetic(seeds=(0,)), {"s": TASKS}, tmp_path, main_metric="r10")
    assert metrics["s"]["ft"]["r10_final_avg_std"] == 0.0
    row = next(line for line in (tmp_path / "report.md").read_text().splitlines()
               if line.startswith("| ft |"))
    assert "±" not in row


def test_build_report_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="no evaluation rows for sequence 's'"):
        build_report(_synthetic().iloc[:0], {"s": TASKS}, tmp_path)
    df = _synthetic()
    with pytest.raises(ValueError, match=r"undeclared sequences \['s'\]"):
        build_report(df, {"other": TASKS}, tmp_path)
    with pytest.raises(ValueError, match=r"missing columns \['sequence'\]"):
        build_report(df.drop(columns=["sequence"]), {"s": TASKS}, tmp_path)
    df = df[~((df["method"] == "ft") & (df["metric"] == "map"))]
    with pytest.raises(ValueError, match="'ft'"):
        build_report(df, {"s": TASKS}, tmp_path)


def test_two_sequences_report_each_and_an_overview(tmp_path):
    """The experiment matrix's sequence axis: each sequence gets its own matrices and metrics."""
    rev = list(reversed(TASKS))
    df = pd.concat([_synthetic(), _synthetic(sequence="rev", names=[t["name"] for t in rev])])
    metrics = build_report(df, {"s": TASKS, "rev": rev}, tmp_path)
    assert list(metrics) == ["s", "rev"]
    assert metrics["rev"]["ft"]["map_bwt"] == pytest.approx(-15.0)
    acc = pd.read_csv(tmp_path / "plots" / "rev" / "acc_matrix_ft.csv")
    assert acc[acc["step"] == 1]["task"].tolist()[0] == "esc"  # the reversed order's columns
    curves = pd.read_csv(tmp_path / "plots" / "scores_over_steps.csv")
    assert set(curves["sequence"]) == {"s", "rev"} and len(curves) == 2 * 2 * 3 * 4
    text = (tmp_path / "report.md").read_text()
    assert "## Overview" in text and "| Method | s | rev |" in text
    assert "## Sequence `rev`" in text and "(plots/rev/acc_matrix_dns.png)" in text


def test_collect_concatenates_and_names_bad_file(tmp_path):
    df = _synthetic()
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    df.iloc[:10].to_parquet(first)
    df.iloc[10:].to_parquet(second)
    assert len(collect([first, second])) == len(df)
    broken = tmp_path / "broken_eval.parquet"
    df.drop(columns=["seed"]).to_parquet(broken)
    with pytest.raises(ValueError, match=r"broken_eval\.parquet.*seed"):
        collect([first, broken])


def test_html_rendering_is_self_contained(built):
    html = (built[0] / "report.html").read_text()
    assert html.startswith("<!doctype html>") and "<table>" in html
    assert html.count("data:image/png;base64,iVBOR") >= 4  # every figure inlined as a PNG
    assert "plots/" not in html  # no link that breaks when the file is mailed


def test_a_trivial_widest_recall_is_flagged(tmp_path):
    """R@10 on a test split of at most 10 pairs is 100 whatever the model: the report says so."""
    tasks = [dict(t, pairs={"train": 40, "test": 8 if t["name"] == "esc" else 50}) for t in TASKS]
    build_report(_synthetic(), {"s": tasks}, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "R@10 is 100 by construction on a task whose test split holds at most 10 pairs: " \
           "esc (8 pairs)." in md
    build_report(_synthetic(), {"s": TASKS}, tmp_path / "b")  # sizes unknown: no claim
    assert "by construction" not in (tmp_path / "b/report.md").read_text()


def test_relevance_left_to_its_default_is_reported_as_evaluation_applies_it(tmp_path):
    """A class-paired task without `relevance` is scored label-aware; the report says so."""
    tasks = [{k: v for k, v in t.items() if k != "relevance"} for t in TASKS]
    build_report(_synthetic(), {"s": tasks}, tmp_path)
    rows = {line.split(" | ")[1]: line for line in (tmp_path / "report.md").read_text()
            .splitlines() if " | sample | " in line or " | class | " in line}
    assert "label-aware" in rows["esc"] and "instance" in rows["coco"], rows


def test_zs_acc_says_which_tasks_it_averages_when_not_all_have_prompts(built):
    out, _ = built
    text = (out / "report.md").read_text()
    assert "ZS-Acc the final average zero-shot accuracy over the 1 of 3 tasks with class " \
           "prompts (esc;" in text


def test_settings_section_lists_what_the_numbers_come_from(tmp_path):
    settings = {"model": {"embed_dim": 64}, "loss": {"preset": "paper"},
                "train": {"epochs": 2, "lr": 0.01}, "methods": {"dns": {"lr": 0.0303}},
                "tuned": None, "encoders": {"text": "precomputed:imagebind"},
                "imported": ["coco"]}
    build_report(_synthetic(), {"s": TASKS}, tmp_path, settings=settings)
    text = (tmp_path / "report.md").read_text()
    assert "- Loss: InfoNCE, temperature 1, normalize False, symmetric False (preset paper)." \
        in text
    assert "tasks coco use imported features" in text and "dns lr 0.0303" in text
    assert "- Tuned values: none" in text
