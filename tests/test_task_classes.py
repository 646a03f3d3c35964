"""Task `classes` by index or class name: resolved to indices at start-up where the corpus's
class list is known (builtins, generic corpus.json), else when sharding/importing and
evaluating; an unknown name or an index outside the class list names `tasks.<name>.classes`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cmcl.config import ParamsError, check
from cmcl.shards import iter_samples, shard_task

ROOT = Path(__file__).resolve().parents[1]
T1 = "t1_text_image_04"


def params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_builtin_task_classes_by_name_resolve_at_startup():
    p = params()
    p["tasks"][T1]["classes"] = ["zero", "one", 2, "three", 4]
    assert check(p)["tasks"][T1]["classes"] == [0, 1, 2, 3, 4]
    assert check(params())["tasks"][T1]["classes"] == [0, 1, 2, 3, 4]  # indices unchanged


@pytest.mark.parametrize("classes, message", [
    ([0, 42], f"tasks.{T1}.classes: 42 is outside the class list; the corpus's classes are "
              "['zero', 'one', "),
    (["zero", "cat"], f"tasks.{T1}.classes: 'cat' is not a class name; the corpus's classes "
                      "are ['zero', "),
    ([0, "zero"], f"tasks.{T1}.classes: [0, 'zero'] names a class twice (as indices [0, 0])"),
])
def test_task_classes_outside_the_class_list_are_refused_at_startup(classes, message):
    """[0, 42] used to pass and crash evaluate with an IndexError."""
    p = params()
    p["tasks"][T1]["classes"] = classes
    with pytest.raises(ParamsError) as e:
        check(p)
    assert message in str(e.value)


def test_generic_corpus_classes_resolve_from_corpus_json(corpus):
    p = params()
    p["corpora"]["mine"] = {"path": str(corpus)}
    p["tasks"]["mine_ti"] = {"corpus": "mine", "modalities": ["text", "image"],
                             "classes": ["three", "one"]}
    assert check(p)["tasks"]["mine_ti"]["classes"] == [3, 1]
    p["tasks"]["mine_ti"]["classes"] = [1, 4]
    with pytest.raises(ParamsError, match=r"tasks\.mine_ti\.classes: 4 is outside the class "
                                          r"list; the corpus's classes are \['zero'"):
        check(p)
    meta = json.loads((corpus / "corpus.json").read_text())
    del meta["classes"]
    (corpus / "corpus.json").write_text(json.dumps(meta))
    p["tasks"]["mine_ti"]["classes"] = ["one", 2]
    with pytest.raises(ParamsError, match=r"tasks\.mine_ti\.classes: 'one' is not a class name; "
                                          r"the corpus declares no class list"):
        check(p)
    p["tasks"]["mine_ti"]["classes"] = [1, 7]  # no class list: any index may be a label
    assert check(p)["tasks"]["mine_ti"]["classes"] == [1, 7]


def test_shard_time_resolution_of_class_names(corpus, tmp_path):
    """What adapters unknown at start-up (paper layouts) get: names resolved when sharding."""
    task = {"name": "ti", "corpus": "c", "modalities": ["text", "image"],
            "classes": ["one", "two"]}
    shard_task(task, {"path": str(corpus)}, "test", tmp_path / "s")
    assert sorted(int(s["cls"]) for s in iter_samples(tmp_path / "s")) == [1, 1, 2, 2]
    for bad, why in ((["one", "cat"], "'cat' is not a class name"),
                     ([1, 42], "42 is outside the class list")):
        with pytest.raises(ValueError, match=rf"tasks\.ti\.classes: {why}"):
            shard_task(task | {"classes": bad}, {"path": str(corpus)}, "test", tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_features_h5_import_resolves_class_names(tmp_path):
    pytest.importorskip("h5py")
    from test_corpora_paper import make_classes, make_h5

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


def test_evaluate_resolves_class_names_and_refuses_indices_outside():
    """Zero-shot prompts are picked by index; a name is resolved through the features' class
    list, and [0, 42] is an error naming the key instead of an IndexError."""
    from cmcl.evaluate import score_task

    rng = np.random.default_rng(0)
    labels = np.array([1, 1, 2, 2])
    prompts = torch.from_numpy(rng.normal(size=(3, 2, 4)).astype(np.float32))
    data = {"image": torch.from_numpy(prompts.mean(1)[labels].numpy()),
            "text": torch.from_numpy(rng.normal(size=(4, 4)).astype(np.float32)),
            "labels": labels, "meta": {"classes": ["a", "b", "c"]},
            "prompts": {"prompts": prompts, "class_ids": torch.arange(3)}}
    ec = {"n_subsets": 1, "subset_size": 4}
    task = {"name": "it", "modalities": ["image", "text"], "relevance": "label"}

    def score(classes):
        return score_task(lambda m, x: x.float(), True, task | {"classes": classes}, data, ec,
                          True)

    assert score(["b", "c"]) == score([1, 2]) and score([1, 2])["zs_acc"] == 1.0
    with pytest.raises(ValueError, match=r"tasks\.it\.classes: 42 is outside the class list"):
        score([0, 42])
