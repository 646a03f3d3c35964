"""Scoring a task: class names resolved through the features' class list, indices outside it
refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch


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


@pytest.mark.parametrize("task, labels, why", [
    ({"relevance": "label"}, [-1, -1, -1, -1], "relevance 'label' needs a label on every"),
    ({"pairing": "class"}, [-1, -1, 1, 2], "relevance 'label' needs a label on every"),
    ({}, [-1, 1, 2, 2], "a split is labelled throughout or not at all"),
])
def test_unlabelled_samples_are_never_scored_as_a_class(task, labels, why):
    """Backstop behind sharding: every -1 used to be one class (100% mAP untrained), and a
    partly labelled split silently lost its zero-shot accuracy."""
    from cmcl.evaluate import score_task

    rng = np.random.default_rng(0)
    data = {"image": torch.from_numpy(rng.normal(size=(4, 4)).astype(np.float32)),
            "text": torch.from_numpy(rng.normal(size=(4, 4)).astype(np.float32)),
            "labels": np.array(labels), "meta": {"classes": ["a", "b", "c"]}, "prompts": None}
    ec = {"n_subsets": 1, "subset_size": 4}
    t = {"name": "it", "modalities": ["image", "text"], **task}
    n = sum(x < 0 for x in labels)
    with pytest.raises(ValueError, match=rf"task 'it': {n} of 4 samples have no label \(-1\); "
                                         rf"{why}"):
        score_task(lambda m, x: x.float(), True, t, data, ec, True)
    unlabelled = data | {"labels": np.full(4, -1)}  # instance relevance needs no labels
    assert "map" in score_task(lambda m, x: x.float(), True, {**t, "relevance": "instance"},
                               unlabelled, ec, True)
