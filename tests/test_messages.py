"""OS-level failures and unreadable inputs end in one line naming the file and what to do."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_in_train_is_one_line_and_leaves_nothing(corpus, tmp_path, monkeypatch,
                                                           capsys):
    import cmcl.io
    from cmcl.cli import main
    from cmcl.embed import embed_split
    from cmcl.shards import shard_task
    from cmcl.train import init_step

    task = {"name": "ia", "corpus": "c", "modalities": ["image", "audio"], "pairing": "class"}
    cfg = {"model": {"embed_dim": 8}, "loss": {}, "methods": {}, "task": task,
           "train": {"epochs": 1, "batch_size": 4, "lr": 0.01, "weight_decay": 0.0}}
    shard_task(task, {"path": str(corpus)}, "train", tmp_path / "s")
    embed_split(tmp_path / "s", tmp_path / "f", {"image": "pixels", "audio": "mfcc_stats"})
    init_step(cfg, "finetune", 1, [tmp_path / "f"], tmp_path / "step0")
    monkeypatch.setattr(cmcl.io, "save_file", enospc)
    out = tmp_path / "runs/step1"
    assert main(["train", "--cfg", json.dumps(cfg), "--method", "finetune", "--seed", "1",
                 "--step", "1", "--features", str(tmp_path / "f"), "--prev",
                 str(tmp_path / "step0"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"cmcl train: error: {out}: no space left on the device (")
    assert "GB free on" in err and err.endswith("free space (or move data/ and results/ to a "
                                                "larger disk) and rerun")
    assert list((tmp_path / "runs").iterdir()) == []  # no step folder, no temp folder


def test_disk_full_in_corpus_is_one_line(tmp_path, monkeypatch, capsys):
    from cmcl.cli import main

    monkeypatch.setattr(Path, "write_bytes", enospc)
    out = tmp_path / "raw/digits"
    assert main(["corpus", "--cfg", '{"builtin": "digits"}', "--out", str(out)]) == 1
    assert capsys.readouterr().err.startswith(f"cmcl corpus: error: {out}: no space left")
    assert list((tmp_path / "raw").iterdir()) == []


def test_disk_full_in_report_removes_what_it_wrote(tmp_path, monkeypatch, capsys):
    import pandas as pd

    import cmcl.report
    from cmcl.cli import main

    out = tmp_path / "reports"
    (out / "plots").mkdir(parents=True)
    (out / "old.txt").write_text("from an earlier report")

    def half_report(df, sequences, out_dir, *a, **k):
        (Path(out_dir) / "plots/scores_over_steps.csv").write_text("step,value\n")
        enospc()

    monkeypatch.setattr(cmcl.report, "collect", lambda evals: pd.DataFrame())
    monkeypatch.setattr(cmcl.report, "build_report", half_report)
    assert main(["report", "--cfg", '{"sequences": {}}', "--evals", "x.parquet",
                 "--out-dir", str(out)]) == 1
    assert capsys.readouterr().err.startswith(f"cmcl report: error: {out}: no space left")
    assert sorted(p.name for p in out.rglob("*")) == ["old.txt", "plots"]


def test_non_utf8_manifest_names_file_and_line(tmp_path):
    from cmcl.corpora.generic import read_rows

    f = tmp_path / "manifest.jsonl"
    f.write_bytes(b'{"id": "a", "split": "train", "text": "ok"}\n'
                  b'{"id": "b", "split": "train", "text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=rf"{f}:2: not UTF-8 text \(byte 0xe9 at column 43\); "
                                         "save the manifest as UTF-8"):
        read_rows(f)
    c = tmp_path / "manifest.csv"
    c.write_bytes(b"id,split,text\na,train,ok\nb,train,caf\xe9\n")
    with pytest.raises(ValueError, match=rf"{c}:3: not UTF-8 text \(byte 0xe9 at column 12\)"):
        read_rows(c)


def test_snakemake_without_the_venv_on_path_says_to_activate_it(tmp_path):
    """`.venv/bin/snakemake` from a shell whose `python` lacks cmcl: one line, no job runs."""
    d = tmp_path / "proj"
    d.mkdir()
    for name in ("Snakefile", "params.yaml"):
        (d / name).write_text((ROOT / name).read_text())
    (d / "pipeline").symlink_to(ROOT / "pipeline")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text("#!/bin/sh\necho 'No module named cmcl' >&2\nexit 1\n")
    (fake / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:/usr/bin:/bin"}
    p = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n"], cwd=d, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    out = p.stdout + p.stderr
    assert (f"Snakefile: jobs run `python -m cmcl`, and `python` on PATH is {fake}/python, "
            "which cannot import cmcl") in out
    assert f"run `source {Path(sys.executable).parent}/activate` first" in out
    assert "Traceback" not in out
