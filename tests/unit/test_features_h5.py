"""Features from HDF5 files in the authors' layout: import round trip, a task from its params
entry, errors that name the sample, the corpus adapter, class names, train/test overlap."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.paper_corpora import make_classes, make_h5, put, rows

from cmcl.corpora import open_corpus
from cmcl.corpora.features_h5 import import_features, import_task
from cmcl.shards import iter_samples, read_features

h5py = pytest.importorskip("h5py")


# ---------------------------------------------------------------- HDF5 feature import
UCF_IDS = ["ApplyEyeMakeup_v_ApplyEyeMakeup_g01_c01", "YoYo_v_YoYo_g01_c01",
           "YoYo_v_YoYo_g02_c01"]


def test_import_features_round_trip(tmp_path):
    from cmcl.evaluate import load_split

    arrays = make_h5(tmp_path / "ucf101_test_imagebind.h5", UCF_IDS, 2)
    table = make_classes(tmp_path / "ucf101_class_imagebind.h5", ["YoYo", "ApplyEyeMakeup"])
    n = import_features(tmp_path / "ucf101_test_imagebind.h5", ["text", "video"],
                        tmp_path / "f", "test", "t1", tmp_path / "ucf101_class_imagebind.h5",
                        label_regex=r"^([A-Za-z]+)_v_")
    assert n == 3
    feats = read_features(tmp_path / "f")
    for i, sid in enumerate(UCF_IDS):  # sorted ids, rows in declared order
        np.testing.assert_array_equal(feats["text"][i], arrays[sid][0])
        np.testing.assert_array_equal(feats["video"][i], arrays[sid][1])
    assert feats["labels"].tolist() == [0, 1, 1]  # classes sorted: ApplyEyeMakeup, YoYo
    meta = feats["meta"]
    assert set(meta) == {"task", "split", "modalities", "count", "classes", "templates",
                         "encoders", "dims", "dtype", "sha256"}  # sha256: every file written
    assert meta["classes"] == ["ApplyEyeMakeup", "YoYo"] and meta["dims"] == {"text": 8,
                                                                               "video": 8}
    prompts = load_split(tmp_path / "f")["prompts"]
    assert tuple(prompts["prompts"].shape) == (2, 1, 8)
    np.testing.assert_array_equal(prompts["prompts"][1, 0].numpy(), table["YoYo"])
    assert prompts["class_ids"].tolist() == [0, 1]


def test_import_task_from_params_entry(tmp_path):
    root = tmp_path / "vggsound"
    ids = ["a_b_000010", "c_000020", "tensor(d_000030)"]
    arrays = make_h5(root / "vggsound_s_train_unibind.h5", ids, 3)
    make_classes(root / "vggsound_s_class_unibind.h5", ["dog", "piano"])
    put(root, "labels.csv", "id,label\na_b_000010,piano\nc_000020,dog\nd_000030,piano\n")
    corpus = {"path": str(root), "adapter": "features_h5",
              "options": {"encoder": "unibind", "dataset": "vggsound_s", "labels": "labels.csv",
                          "modalities": ["text", "audio", "video"]}}
    task = {"name": "av", "corpus": "vgg", "modalities": ["audio", "video"], "classes": [1]}
    assert import_task(task, corpus, "train", tmp_path / "f") == 2
    feats = read_features(tmp_path / "f")
    assert feats["meta"]["modalities"] == ["audio", "video"]
    assert feats["meta"]["encoders"]["audio"] == "precomputed:unibind"
    np.testing.assert_array_equal(feats["video"][1], arrays["tensor(d_000030)"][2])
    assert [json.loads(s["json"])["id"] for s in iter_samples(tmp_path / "f")] == \
        ["a_b_000010", "d_000030"]


def test_import_errors_name_the_sample_and_leave_nothing(tmp_path):
    h5 = tmp_path / "esc50_train_languagebind.h5"
    make_h5(h5, ["1-1-A-0.wav", "1-2-A-1.wav"], 2)
    with h5py.File(h5, "a") as f:
        f.create_dataset("1-3-A-2.wav", data=np.zeros((1, 8), np.float32))
    with pytest.raises(ValueError, match=r"esc50_train_languagebind\.h5: sample '1-3-A-2\.wav': "
                                         r"expected \[2, d\]"):
        import_features(h5, ["text", "audio"], tmp_path / "f", "train", "t2")
    assert not (tmp_path / "f").exists()
    labels = {"1-1-A-0.wav": "dog", "1-2-A-1.wav": "cat", "1-3-A-2.wav": "dog"}
    with h5py.File(h5, "a") as f:
        del f["1-3-A-2.wav"]
    make_classes(tmp_path / "cls.h5", ["dog", "rain"])
    with pytest.raises(ValueError, match=r"sample '1-2-A-1\.wav': label 'cat' not in the class"):
        import_features(h5, ["text", "audio"], tmp_path / "f", "train", "t2",
                        tmp_path / "cls.h5", labels=labels)
    assert not (tmp_path / "f").exists()


def test_features_h5_corpus_adapter(tmp_path):
    from cmcl.shards import load_npy

    arrays = make_h5(tmp_path / "llvip_test_imagebind.h5", ["1", "tensor(2)"], 2)
    make_h5(tmp_path / "llvip_train_imagebind.h5", ["3"], 2)
    info, got = rows("features_h5", tmp_path, encoder="imagebind", dataset="llvip",
                     modalities=["image", "thermal"])
    assert info.modalities == {"image": "file", "thermal": "file"} and info.classes is None
    assert {k: s.split for k, s in got.items()} == {"1": "test", "2": "test", "3": "train"}
    ext, payload = got["2"].data["thermal"]
    assert ext == "npy"
    np.testing.assert_array_equal(load_npy(payload, "x"), arrays["tensor(2)"][1])
    with pytest.raises(ValueError, match="needs the options `encoder`"):
        rows("features_h5", tmp_path, modalities=["image", "thermal"])


def test_features_h5_import_resolves_class_names(tmp_path):
    pytest.importorskip("h5py")
    from cmcl.corpora.features_h5 import import_task
    from cmcl.shards import read_features

    root = tmp_path / "ucf"
    make_classes(root / "ucf_class_ib.h5", ["ApplyEyeMakeup", "YoYo"])
    make_h5(root / "ucf_train_ib.h5", [f"{c}_v_{i}" for c in ("ApplyEyeMakeup", "YoYo")
                                        for i in range(3)], 2)
    corpus = {"path": str(root), "adapter": "features_h5",
              "options": {"encoder": "ib", "modalities": ["text", "video"], "splits": ["train"],
                          "label_regex": "^([A-Za-z]+)_v_"}}
    task = {"name": "tv", "corpus": "ucf", "modalities": ["text", "video"], "classes": ["YoYo"]}
    assert import_task(task, corpus, "train", tmp_path / "f") == 3
    assert set(read_features(tmp_path / "f")["labels"].tolist()) == {1}
    with pytest.raises(ValueError, match=r"tasks\.tv\.classes: 'Juggling' is not a class name"):
        import_task(task | {"classes": ["Juggling"]}, corpus, "train", tmp_path / "g")


def test_features_h5_train_test_overlap_is_refused(tmp_path):
    h5py = pytest.importorskip("h5py")
    from cmcl.corpora.features_h5 import import_task

    root = tmp_path / "esc"
    root.mkdir()
    for split, ids in (("train", ["a", "b", "c"]), ("test", ["c", "tensor(a)", "d"])):
        with h5py.File(root / f"esc_{split}_lb.h5", "w") as f:
            for sid in ids:
                f.create_dataset(sid, data=np.zeros((2, 4), np.float32))
    corpus = {"path": str(root), "adapter": "features_h5",
              "options": {"encoder": "lb", "modalities": ["text", "audio"]}}
    task = {"name": "ta", "corpus": "esc", "modalities": ["text", "audio"]}
    match = (r"2 sample id\(s\) are in more than one split \(train/test overlap\), "
             r"e\.g\. 'c' \(train and test\), 'a'")
    with pytest.raises(ValueError, match=match):
        import_task(task, corpus, "train", tmp_path / "f")
    with pytest.raises(ValueError, match=match):
        open_corpus("esc", root, "features_h5", corpus["options"])
    assert not (tmp_path / "f").exists()
