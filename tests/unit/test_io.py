"""Atomic writes (an exception or SIGKILL leaves no final file), JSON and safetensors round trips
and errors, and the repair hint for a damaged artifact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from cmcl.io import atomic_path, load_tensors, read_json, save_tensors, write_json


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_killed_writer_leaves_no_final_file(tmp_path):
    """A process killed mid-write (SIGKILL) never leaves a file under the final name."""
    target = tmp_path / "big.json"
    code = (f"from cmcl.io import atomic_path\nimport time\n"
            f"with atomic_path({str(target)!r}) as t:\n"
            f"    f = open(t, 'w'); f.write('x' * 1000); f.flush(); print('ready', flush=True)\n"
            f"    time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not target.exists()


def test_json_and_tensor_round_trip_and_errors(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    assert read_json(tmp_path / "a.json") == {"x": 1}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        read_json(tmp_path / "bad.json")
    save_tensors(tmp_path / "t.safetensors", {"w": torch.ones(2, 3)})
    assert torch.equal(load_tensors(tmp_path / "t.safetensors")["w"], torch.ones(2, 3))
    torch.save({"w": torch.ones(2)}, tmp_path / "pickled.safetensors")  # a pickle in disguise
    with pytest.raises(ValueError, match="pickled.safetensors: not a valid safetensors file"):
        load_tensors(tmp_path / "pickled.safetensors")


def test_repair_hint_names_dvc_checkout_for_cached_outs(tmp_path, monkeypatch):
    from cmcl.io import repair_hint

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  p:\n    cmd: x\n    outs:\n      - results/runs:\n          persist: true\n"
        "      - data/features:\n          cache: false\n")
    hint = repair_hint("results/runs/s/dns/seed1/step2/state/subspace.safetensors")
    assert hint.startswith("`dvc checkout results/runs`")
    assert "delete results/runs/s/dns/seed1/step2 and run `snakemake --cores all " \
           "results/runs/s/dns/seed1/step2`" in hint
    assert repair_hint("data/features/t/train/000000.tar").startswith(
        "delete data/features/t/train and run `snakemake --cores all data/features/t/train`")
