"""One Snakemake run at a time per project folder: a second call cannot rerun the first's jobs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from helpers.data import ROOT
from helpers.run_lock import HOLD

BIN = Path(sys.executable).parent


def test_the_snakefile_refuses_a_run_while_another_holds_the_folder(tmp_path):
    """The holder stands in for a running Snakemake (the Snakefile takes the same lock)."""
    for name in ("Snakefile", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    cmd = [str(BIN / "snakemake"), "--cores", "1", "data/raw/digits"]
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / ".snakemake")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
        dry = subprocess.run([*cmd, "-n"], cwd=tmp_path, env=env, capture_output=True,
                             text=True)
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode != 0
    assert "another Snakemake run is in progress" in second.stderr + second.stdout
    assert f"pid {holder.pid}" in second.stderr + second.stdout
    assert not (tmp_path / "data/raw/digits").exists()  # refused before any job
    assert dry.returncode == 0, dry.stderr[-2000:]
