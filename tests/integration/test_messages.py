"""OS-level failures and unreadable inputs end in one line naming the file and what to do."""

from __future__ import annotations

import errno
import json
from pathlib import Path


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
