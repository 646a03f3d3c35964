"""Damaged artifacts (flipped floats in weights, method state, feature shards) are refused at
load, naming the file and both digests; `python -m cmcl verify` lists them with the repair."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest

CFG = {"model": {"embed_dim": 8}, "loss": {}, "methods": {},
       "train": {"epochs": 2, "batch_size": 4, "lr": 0.01, "weight_decay": 0.0,
                 "grad_clip": 1.0}}
TASK = {"name": "ia", "corpus": "c", "modalities": ["image", "audio"], "pairing": "class",
        "relevance": "label"}


@pytest.fixture
def chain(corpus, tmp_path, one_thread):
    """Features, step 0 and a DNS step 1 (with its subspace state) of a tiny task."""
    from cmcl.embed import embed_split
    from cmcl.shards import shard_task
    from cmcl.train import init_step, train_step

    for split in ("train", "test"):
        shard_task(TASK, {"path": str(corpus)}, split, tmp_path / f"s_{split}")
        embed_split(tmp_path / f"s_{split}", tmp_path / f"f_{split}",
                    {"image": "pixels", "audio": "mfcc_stats"})
    init_step(CFG, "dns", 1, [tmp_path / "f_train"], tmp_path / "step0")
    train_step(CFG, "dns", 1, 1, TASK, tmp_path / "f_train", tmp_path / "step0",
               tmp_path / "step1")
    return tmp_path


def flip_floats(path, n: int = 100, start: int | None = None) -> None:
    """Negate n float32 values of a safetensors file's data (header intact: it still parses)."""
    raw = bytearray(path.read_bytes())
    if start is None:
        start = 8 + struct.unpack("<Q", raw[:8])[0]
    for i in range(n):
        off = start + 4 * i
        (v,) = struct.unpack("<f", raw[off:off + 4])
        raw[off:off + 4] = struct.pack("<f", -v if v else 1.0)
    path.write_bytes(bytes(raw))


def damaged(path) -> str:
    return rf"{re.escape(str(path))}: damaged: sha256 [0-9a-f]{{64}}, but its producer " \
           r"recorded [0-9a-f]{64}; repair: .*rerun"


def test_producers_record_a_sha256_of_every_file(chain):
    from cmcl.io import sha256_file

    for folder in ("step0", "step1", "f_train", "s_train"):
        meta = json.loads((chain / folder / "meta.json").read_text())
        files = sorted(p.relative_to(chain / folder).as_posix()
                       for p in (chain / folder).rglob("*") if p.is_file())
        assert sorted(meta["sha256"]) == [f for f in files if f != "meta.json"]
        for name, digest in meta["sha256"].items():
            assert sha256_file(chain / folder / name) == digest
    assert "state/subspace.safetensors" in json.loads((chain / "step1/meta.json").read_text())[
        "sha256"]


def test_flipped_floats_in_step_weights_stop_the_next_step_and_evaluate(chain):
    from cmcl.evaluate import evaluate_step
    from cmcl.train import load_model, train_step

    path = chain / "step1/model.safetensors"
    flip_floats(path)
    with pytest.raises(ValueError, match=damaged(path)):
        load_model(chain / "step1")
    with pytest.raises(ValueError, match=damaged(path)):
        train_step(CFG, "dns", 1, 2, TASK, chain / "f_train", chain / "step1", chain / "step2")
    assert not (chain / "step2").exists()
    with pytest.raises(ValueError, match=damaged(path)):
        evaluate_step({"eval": {}}, chain / "step1", [TASK], [chain / "f_test"],
                      chain / "e.parquet")
    assert not (chain / "e.parquet").exists()


def test_weights_of_a_step_without_file_digests_are_checked_by_the_weights_digest(chain):
    """Steps written before file digests were recorded still carry log.final_digest."""
    from cmcl.io import write_json
    from cmcl.train import load_model

    meta = json.loads((chain / "step1/meta.json").read_text())
    del meta["sha256"]
    write_json(chain / "step1/meta.json", meta)
    flip_floats(chain / "step1/model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors: damaged: sha256 [0-9a-f]{16}, "
                                         r"but its producer recorded [0-9a-f]{16}"):
        load_model(chain / "step1")


def test_flipped_floats_in_subspace_state_stop_the_next_step(chain):
    from cmcl.train import load_model, load_strategy, train_step

    path = chain / "step1/state/subspace.safetensors"
    flip_floats(path)
    model, _ = load_model(chain / "step1")
    with pytest.raises(ValueError, match=damaged(path)):
        load_strategy(chain / "step1", model)
    with pytest.raises(ValueError, match=damaged(path)):
        train_step(CFG, "dns", 1, 2, TASK, chain / "f_train", chain / "step1", chain / "step2")
    assert not (chain / "step2").exists()


def test_flipped_floats_in_a_feature_shard_stop_training(chain):
    from cmcl.shards import read_features
    from cmcl.train import train_step

    tar = chain / "f_train/000000.tar"
    raw = bytearray(tar.read_bytes())
    at = 0
    for _ in range(10):  # 10 floats in each of 10 .npy payloads: 100 flipped floats
        at = raw.index(b"\x93NUMPY", at)
        data = at + 10 + struct.unpack("<H", raw[at + 8:at + 10])[0]
        raw[data:data + 40] = (-np.frombuffer(bytes(raw[data:data + 40]), np.float32)).tobytes()
        at = data
    tar.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=damaged(tar)):
        read_features(chain / "f_train")
    with pytest.raises(ValueError, match=damaged(tar)):
        train_step(CFG, "dns", 1, 2, TASK, chain / "f_train", chain / "step1", chain / "step2")


def test_verify_lists_damaged_artifacts_and_the_repair(chain, capsys):
    from cmcl.cli import main

    assert main(["verify", str(chain)]) == 0
    out = capsys.readouterr().out
    assert "verify: 6 artifact(s)" in out and "no damage" in out
    flip_floats(chain / "step1/state/subspace.safetensors")
    flip_floats(chain / "step0/model.safetensors")
    with pytest.raises(SystemExit) as e:
        main(["verify", str(chain)])
    assert e.value.code == 1
    out = capsys.readouterr().out
    for f in ("step1/state/subspace.safetensors", "step0/model.safetensors"):
        assert re.search(rf"DAMAGED {re.escape(str(chain / f))}: sha256 [0-9a-f]{{64}}, "
                         r"recorded [0-9a-f]{64}", out), out
    assert f"  {chain / 'step1'}: delete {chain / 'step1'} and run `snakemake --cores all " \
           f"{chain / 'step1'}`" in out
    assert "2 damaged file(s)" in out
    with pytest.raises(SystemExit):  # one file: its artifact
        main(["verify", str(chain / "step0/model.safetensors")])
    assert "1 damaged file(s)" in capsys.readouterr().out
