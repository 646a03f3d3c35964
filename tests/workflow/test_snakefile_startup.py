"""Snakemake's start-up refuses bad params before any job: option rules, duplicate keys and
bad YAML, a `python` without cmcl; an override merging into a declared task is noted once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.data import ROOT
from helpers.snake import snakemake


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Path:
    """The workflow files and the default params, for `snakemake -n` at start-up."""
    import shutil

    d = tmp_path_factory.mktemp("mini")
    shutil.copy(ROOT / "Snakefile", d / "Snakefile")
    shutil.copytree(ROOT / "pipeline", d / "pipeline")
    shutil.copy(ROOT / "params.yaml", d / "params.yaml")
    return d


def test_snakemake_refuses_rules_duplicate_keys_and_bad_yaml_at_startup(mini, tmp_path):
    over = tmp_path / "over.yaml"
    over.write_text("methods:\n  dns: {threshold_mode: energy, threshold_in: 1.5}\n")
    p = snakemake(mini, "-n", "--configfile", str(over))
    assert p.returncode != 0
    assert "methods.dns.threshold_in: 1.5 is greater than the maximum of 1" in p.out
    over.write_text("train:\n  epochs: 2\n  epochs: 3\n")
    p = snakemake(mini, "-n", "--configfile", str(over))
    assert p.returncode != 0 and "duplicate key 'epochs' (first at line 2)" in p.out
    good = (mini / "params.yaml").read_text()
    try:
        (mini / "params.yaml").write_text(good.replace("train:\n", "train:\n  epochs: 9\n", 1))
        p = snakemake(mini, "-n")
        assert p.returncode != 0 and "params.yaml: not valid YAML at line" in p.out
        assert "duplicate key 'epochs'" in p.out
        (mini / "params.yaml").write_text(good.replace("train:\n", "train: [\n", 1))
        p = snakemake(mini, "-n")
        assert p.returncode != 0
        assert "params.yaml: not valid YAML at line" in p.out and "column" in p.out
    finally:
        (mini / "params.yaml").write_text(good)


def test_an_override_merging_into_a_declared_task_is_noted_once(mini, tmp_path):
    over = tmp_path / "over.yaml"
    over.write_text("tasks:\n  t1_text_image_04: {classes: [0, 1, 2]}\n"
                    "  mine: {corpus: digits, modalities: [text, image]}\n"
                    "sequences:\n  digits: [mine, t2_text_audio]\n")
    p = snakemake(mini, "-n", "--configfile", str(over))
    assert p.returncode == 0, p.out
    notice = [line for line in p.out.splitlines() if line.startswith("cmcl: notice:")]
    assert len(notice) == 1, p.out
    assert "tasks.t1_text_image_04 (merged key by key, by " in notice[0]
    assert "sequences.digits (replaced, by " in notice[0]
    assert "tasks.mine" not in notice[0]
    # a job's own parse of the Snakefile (subprocess mode) prints nothing
    p = snakemake(mini, "--cores", "1", "data/raw/digits", "--configfile", str(over))
    assert p.returncode == 0, p.out[-3000:]
    assert sum(line.startswith("cmcl: notice:") for line in p.out.splitlines()) == 1


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
