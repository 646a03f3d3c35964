"""Features imported from the authors' HDF5 layout train and evaluate like embedded ones."""

from __future__ import annotations

from helpers.paper_corpora import make_classes, make_h5

from cmcl.corpora.features_h5 import import_task


def test_imported_features_train_and_evaluate_unchanged(tmp_path):
    from cmcl.evaluate import evaluate_step
    from cmcl.train import init_step, train_step

    root = tmp_path / "ucf101"
    make_classes(root / "ucf101_class_imagebind.h5", ["ApplyEyeMakeup", "YoYo"])
    for split, groups in (("train", range(12)), ("test", range(12, 18))):  # disjoint ids
        make_h5(root / f"ucf101_{split}_imagebind.h5",
                [f"{c}_v_{c}_g{i:02d}_c01" for c in ("ApplyEyeMakeup", "YoYo") for i in groups],
                2, seed=len(split))
    corpus = {"path": str(root), "adapter": "features_h5",
              "options": {"encoder": "imagebind", "modalities": ["text", "video"],
                          "label_regex": "^([A-Za-z]+)_v_"}}
    task = {"name": "tv", "corpus": "ucf101", "modalities": ["text", "video"],
            "relevance": "label"}
    for split in ("train", "test"):
        import_task(task, corpus, split, tmp_path / f"f_{split}")
    cfg = {"model": {"embed_dim": 8, "init": "identity"}, "loss": {"preset": "paper"},
           "methods": {}, "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "weight_decay": 1e-3,
                                                    "grad_clip": 1.0},
           "eval": {"n_subsets": 1, "subset_size": 100}}
    init_step(cfg, "finetune", 1, [tmp_path / "f_train"], tmp_path / "step0")
    train_step(cfg, "finetune", 1, 1, task, tmp_path / "f_train", tmp_path / "step0",
               tmp_path / "step1")
    df = evaluate_step(cfg, tmp_path / "step1", [task], [tmp_path / "f_test"],
                       tmp_path / "e.parquet")
    assert {"r10", "map", "zs_acc"} <= set(df["metric"])
