"""CILA: the distillation coefficient follows the measured loss ratio of the previous task."""

from __future__ import annotations

import pytest
import torch
from helpers.toy_classes import EQUAL_T, batch_of, cfg, context, fit, fresh, new_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cila_coefficient_follows_the_loss_ratio():
    model = new_model()
    s = fresh("cila", model, base_weight=2.0, max_ratio=50.0)
    assert s.coefficient() == 2.0  # nothing measured yet: plain Co²L weight
    s.history = [{"contrastive": 3.0, "distillation": 0.5}]
    big = s.coefficient()
    s.history = [{"contrastive": 0.5, "distillation": 3.0}]
    small = s.coefficient()
    assert big == pytest.approx(12.0) and small == pytest.approx(2 / 6) and big > 2 > small
    s.history = [{"contrastive": 4.0, "distillation": 1.0}, {"contrastive": 2.0,
                                                             "distillation": 2.0}]
    assert s.coefficient() == pytest.approx(2.0 * 3.0 / 1.5)  # ratio of the averages
    s.history = [{"contrastive": 1e3, "distillation": 1e-6}]
    assert s.coefficient() == pytest.approx(100.0)  # clipped to max_ratio
    assert fresh("cila", model, base_weight=2.0, adapt=False).coefficient() == 2.0


def test_cila_measures_losses_and_adapts_the_next_task(tmp_path):
    torch.manual_seed(0)
    model = new_model()
    s = fresh("cila", model, memory_size=40, **EQUAL_T)
    c = cfg("cila", memory_size=40, **EQUAL_T)
    ctx = context(model, c, ("a", "b"), 2)
    s.after_task(context(model, c, ("b", "c"), 1))
    s.before_task(ctx)
    batch = batch_of(ctx)
    emb = {m: model(m, batch[m]) for m in ("a", "b")}
    assert s.terms(ctx, batch, emb)["ird"].item() == pytest.approx(0.0, abs=1e-7)
    logs = []
    for step, pair in ((1, ("a", "b")), (2, ("b", "c")), (3, ("a", "c"))):
        s = fresh("cila", model, tmp_path if step > 1 else None, memory_size=40, **EQUAL_T)
        model, log = fit(model, s, c, pair, step)
        s.save_state(tmp_path)
        logs.append(log)
    assert [log["cila_weight"] for log in logs[:2]] == [1.0, 1.0]
    (h,) = s.history[:1]
    assert h["task"] == "t2" and h["distillation"] > 0 and h["contrastive"] > 0
    assert logs[2]["cila_weight"] == pytest.approx(h["contrastive"] / h["distillation"])
    assert len(s.history) == 2 and logs[2]["cila_weight"] != 1.0
