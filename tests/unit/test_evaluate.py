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
