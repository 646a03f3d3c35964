"""Metric tests on hand-computed cases: every expected number below was worked out on paper."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from cmcl.metrics import (
    accuracy_matrix,
    continual_metrics,
    forgetting_per_task,
    retrieval_metrics,
    retrieval_scores,
    zero_shot_accuracy,
)

# 3 tasks; row s = after step s, column j = task j (trained at step j+1)
A = np.array([
    [0.10, 0.20, 0.30],
    [0.80, 0.25, 0.35],
    [0.85, 0.90, 0.40],
    [0.50, 0.70, 0.95],
])


def test_continual_metrics_hand_computed():
    m = continual_metrics(A)
    assert m["final_avg"] == pytest.approx(2.15 / 3)
    assert m["mtil_last"] == pytest.approx(2.15 / 3)
    assert m["avg_inc"] == pytest.approx((0.80 + 0.875 + 2.15 / 3) / 3)
    assert m["bwt"] == pytest.approx(((0.50 - 0.80) + (0.70 - 0.90)) / 2)  # -0.25
    assert m["fwt"] == pytest.approx(((0.25 - 0.20) + (0.40 - 0.30)) / 2)  # 0.075
    assert m["forgetting"] == pytest.approx(((0.85 - 0.50) + (0.90 - 0.70)) / 2)  # 0.275
    assert m["mtil_transfer"] == pytest.approx((0.25 + 0.35 + 0.40) / 3)
    assert m["mtil_avg"] == pytest.approx(5.7 / 9)


def test_forgetting_per_task_uses_best_earlier_score():
    np.testing.assert_allclose(forgetting_per_task(A), [0.35, 0.20])
    improved = A.copy()
    improved[3, 0] = 0.90  # the final score is excluded from the max, so this is negative
    np.testing.assert_allclose(forgetting_per_task(improved), [-0.05, 0.20])


def test_continual_metrics_nan_aware_and_single_task():
    a = A.copy()
    a[3, 1] = np.nan
    m = continual_metrics(a)
    assert m["final_avg"] == pytest.approx((0.50 + 0.95) / 2)
    assert m["bwt"] == pytest.approx(0.50 - 0.80)
    one = continual_metrics(np.array([[0.2], [0.7]]))
    assert one["final_avg"] == pytest.approx(0.7)
    assert math.isnan(one["bwt"]) and math.isnan(one["fwt"]) and math.isnan(one["forgetting"])
    with pytest.raises(ValueError, match="shape"):
        continual_metrics(np.zeros((3, 3)))


# ranks of the relevant (diagonal) item: 1, 2 (loses tie to g0), 1 (wins tie vs g3), 4 (all tie)
SIM = torch.tensor([
    [0.9, 0.5, 0.1, 0.0],
    [0.7, 0.7, 0.2, 0.0],
    [0.1, 0.2, 0.5, 0.5],
    [0.3, 0.3, 0.3, 0.3],
])


def test_instance_recall_and_map_with_ties():
    s = retrieval_scores(SIM, None, None, "instance", ks=(1, 2, 3))
    assert s["r1"] == pytest.approx(2 / 4)
    assert s["r2"] == pytest.approx(3 / 4)
    assert s["r3"] == pytest.approx(3 / 4)
    assert s["map"] == pytest.approx((1 + 1 / 2 + 1 + 1 / 4) / 4)


def test_label_relevance_map_by_hand():
    sim = torch.tensor([[0.9, 0.8, 0.1, 0.5], [0.9, 0.2, 0.3, 0.8]])
    s = retrieval_scores(sim, torch.tensor([0, 1]), torch.tensor([0, 1, 0, 1]), "label",
                         ks=(1, 2))
    # q0: relevant at ranks 1, 4 -> AP 0.75; q1: relevant at ranks 2, 4 -> AP 0.5
    assert s["map"] == pytest.approx(0.625)
    assert s["r1"] == pytest.approx(0.5)
    assert s["r2"] == pytest.approx(1.0)


def test_instance_vs_label_relevance_differ():
    sim = torch.tensor([[0.1, 0.9], [0.9, 0.1]])
    same = torch.tensor([4, 4])
    assert retrieval_scores(sim, None, None, "instance")["r1"] == 0.0
    assert retrieval_scores(sim, same, same, "label")["r1"] == 1.0


def test_retrieval_scores_rejects_bad_input():
    with pytest.raises(ValueError, match="square"):
        retrieval_scores(torch.zeros(2, 3), None, None, "instance")
    with pytest.raises(ValueError, match="labels"):
        retrieval_scores(torch.zeros(2, 2), None, None, "label")
    with pytest.raises(ValueError, match="relevance"):
        retrieval_scores(torch.zeros(2, 2), None, None, "class")


def test_retrieval_metrics_small_set_uses_all_pairs_once():
    gen = torch.Generator().manual_seed(0)
    za, zb = torch.randn(30, 8, generator=gen), torch.randn(30, 8, generator=gen)
    m = retrieval_metrics(za, zb, None, "instance", subset_size=30, seed=0)
    a2b = retrieval_scores(za @ zb.T, None, None, "instance")
    b2a = retrieval_scores(zb @ za.T, None, None, "instance")
    assert m["map_a2b"] == pytest.approx(a2b["map"])
    assert m["r5_b2a"] == pytest.approx(b2a["r5"])
    assert m["r10"] == pytest.approx((a2b["r10"] + b2a["r10"]) / 2)
    assert m == retrieval_metrics(za, zb, None, "instance", n_subsets=3, seed=7)


def test_retrieval_metrics_subset_size_is_respected():
    # all similarities tie, so query i finds its item at rank i+1: R@1 = 1 / gallery size
    ones = torch.ones(300, 4)
    m = retrieval_metrics(ones, ones, None, "instance", n_subsets=3, subset_size=100)
    assert m["r1_a2b"] == pytest.approx(1 / 100)
    assert m["map_b2a"] == pytest.approx(sum(1 / r for r in range(1, 101)) / 100)
    assert retrieval_metrics(ones[:50], ones[:50], None, "instance")["r1"] == pytest.approx(1 / 50)


def test_retrieval_metrics_seeded_subsets_reproducible():
    gen = torch.Generator().manual_seed(1)
    za = torch.randn(400, 16, generator=gen)
    zb = za + 1.5 * torch.randn(400, 16, generator=gen)
    labels = torch.arange(400) % 7
    kw = dict(n_subsets=4, subset_size=60)
    assert retrieval_metrics(za, zb, None, "instance", seed=3, **kw) == \
        retrieval_metrics(za, zb, None, "instance", seed=3, **kw)
    assert retrieval_metrics(za, zb, None, "instance", seed=3, **kw) != \
        retrieval_metrics(za, zb, None, "instance", seed=4, **kw)
    lab = retrieval_metrics(za, zb, labels, "label", seed=3, **kw)
    inst = retrieval_metrics(za, zb, None, "instance", seed=3, **kw)
    assert lab["r1"] >= inst["r1"]  # same subsets; every instance hit is also a label hit


def test_zero_shot_planted_answer_and_tie():
    class_emb = torch.eye(3)
    class_ids = torch.tensor([7, 3, 5])
    z = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]])  # last: tie -> row 0
    labels = torch.tensor([7, 3, 3, 7])
    assert zero_shot_accuracy(z, labels, class_emb, class_ids) == pytest.approx(0.75)


def _rows(run, entries, metric="map"):
    return [dict(run=run, method="m", seed=0, step=s, eval_task=t, metric=metric, value=v)
            for s, t, v in entries]


def test_accuracy_matrix_shape_and_nan():
    df = pd.DataFrame(
        _rows("r_s0", [(0, "t1", 0.1), (0, "t2", 0.2), (1, "t1", 0.8), (2, "t2", 0.9),
                       (2, "other", 0.5)])
        + _rows("r_s0", [(2, "t1", 0.99)], metric="r1"))
    a = accuracy_matrix(df, "map", ["t1", "t2"])
    assert a.shape == (3, 2)
    np.testing.assert_allclose(a, [[0.1, 0.2], [0.8, np.nan], [np.nan, 0.9]])


def test_accuracy_matrix_errors():
    two = pd.DataFrame(_rows("a_s0", [(0, "t1", 0.1)]) + _rows("b_s1", [(0, "t1", 0.2)]))
    with pytest.raises(ValueError, match="a_s0.*b_s1"):
        accuracy_matrix(two, "map", ["t1"])
    dup = pd.DataFrame(_rows("r", [(0, "t1", 0.1), (0, "t1", 0.2)]))
    with pytest.raises(ValueError, match="duplicate"):
        accuracy_matrix(dup, "map", ["t1"])
    late = pd.DataFrame(_rows("r", [(5, "t1", 0.1)]))
    with pytest.raises(ValueError, match="outside"):
        accuracy_matrix(late, "map", ["t1"])


def test_label_relevance_refuses_unlabelled_items():
    """-1 (no label) on both sides used to match as one class: a perfect score by accident."""
    sim = torch.eye(3)
    with pytest.raises(ValueError, match=r"label relevance needs a class label >= 0 on every "
                                         r"item; 3 of 3 queries and 3 of 3 gallery items have "
                                         r"none \(-1\)"):
        retrieval_scores(sim, torch.full((3,), -1), torch.full((3,), -1), "label")
    with pytest.raises(ValueError, match="1 of 3 queries"):
        retrieval_metrics(sim, sim, torch.tensor([0, -1, 1]), "label")
