"""UCF101: the official split lists, bad samples named, sharding through the adapter."""

from __future__ import annotations

import json

import pytest
from helpers.paper_corpora import make_ucf101, put, rows

from cmcl.corpora import ADAPTERS
from cmcl.shards import iter_samples, shard_task


def test_ucf101_official_split_lists(tmp_path):
    root = make_ucf101(tmp_path / "ucf")
    info, got = rows("ucf101", root)
    assert info.classes == ["apply eye makeup", "yo yo"] and "{}" in info.templates
    assert {k: (s.split, s.label) for k, s in got.items()} == {
        "v_ApplyEyeMakeup_g08_c01": ("train", 0), "v_YoYo_g09_c02": ("train", 1),
        "v_ApplyEyeMakeup_g01_c01": ("test", 0), "v_YoYo_g01_c01": ("test", 1)}
    s = got["v_YoYo_g09_c02"]
    assert s.data["video"] == ("avi", (root / "UCF-101/YoYo/v_YoYo_g09_c02.avi").read_bytes())
    assert s.data["text"] == ("txt", "yo yo")
    _, got2 = rows("ucf101", root, split=2)
    assert {k: s.split for k, s in got2.items()} == {"v_YoYo_g01_c01": "train",
                                                      "v_YoYo_g09_c02": "test"}
    with pytest.raises(ValueError, match="split must be 1, 2 or 3"):
        rows("ucf101", root, split=4)
    with pytest.raises(ValueError, match=r"corpus 'ucf101': unknown option\(s\) \['fold'\]"):
        rows("ucf101", root, fold=1)


def test_ucf101_bad_samples_name_corpus_sample_and_file(tmp_path):
    root = make_ucf101(tmp_path / "ucf")
    (root / "UCF-101/YoYo/v_YoYo_g09_c02.avi").unlink()
    with pytest.raises(FileNotFoundError, match=r"corpus 'ucf101': sample 'v_YoYo_g09_c02': "
                                                r"video file .*v_YoYo_g09_c02\.avi does not exist"):
        rows("ucf101", root)
    _, got = rows("ucf101", root, on_error="skip")
    assert len(got) == 3
    skipped = [s for s in ADAPTERS["ucf101"]("ucf101", root, on_error="skip")[1]() if s.error]
    assert len(skipped) == 1 and "v_YoYo_g09_c02.avi does not exist" in skipped[0].error
    put(root, "UCF-101/YoYo/v_YoYo_g09_c02.avi", b"not a video at all")
    with pytest.raises(ValueError, match=r"sample 'v_YoYo_g09_c02': video file .* unreadable"):
        rows("ucf101", root)
    assert len(rows("ucf101", root, verify=False)[1]) == 4
    put(root, "ucfTrainTestlist/testlist01.txt", "Juggling/v_Juggling_g01_c01.avi\n")
    with pytest.raises(ValueError, match=r"sample 'v_Juggling_g01_c01': label 'Juggling' .*"
                                         r"not in the class list .*classInd\.txt"):
        rows("ucf101", root, verify=False)


def test_ucf101_shards_through_the_pipeline(tmp_path):
    root = make_ucf101(tmp_path / "ucf")
    task = {"name": "tv", "corpus": "ucf101", "modalities": ["text", "video"]}
    assert shard_task(task, {"path": str(root), "adapter": "ucf101"}, "test", tmp_path / "s") == 2
    got = {json.loads(s["json"])["id"]: s for s in iter_samples(tmp_path / "s")}
    assert got["v_YoYo_g01_c01"]["video.avi"] == \
        (root / "UCF-101/YoYo/v_YoYo_g01_c01.avi").read_bytes()
    meta = json.loads((tmp_path / "s/meta.json").read_text())
    assert meta["classes"] == ["apply eye makeup", "yo yo"]
