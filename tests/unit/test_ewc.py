"""EWC: the penalty is zero at the anchor, quadratic in the distance and weighted by the
Fisher information, which accumulates over tasks."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.toy_latent import cfg, context, fresh, new_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ewc_penalty_zero_at_anchor_and_weighted_by_fisher():
    model, c = new_model(), cfg("ewc", **{"lambda": 2.0, "gamma": 0.5})
    s = fresh("ewc", model, **c["methods"]["ewc"])
    ctx = context(model, c, ("a", "b"))
    s.after_task(ctx)
    assert s.penalty(model, ("a", "b")) == 0  # at the anchor
    f = s.fisher["heads.a.weight"]
    hi, lo = int(f.argmax()), int(f.argmin())
    assert f.reshape(-1)[hi] > 10 * f.reshape(-1)[lo]
    grow, moved = [], {}
    for i in (hi, lo):
        for d in (0.1, 0.2):
            m = copy.deepcopy(model)
            with torch.no_grad():
                m.heads["a"].weight.view(-1)[i] += d
            moved[i, d] = s.penalty(m, ("a", "b")).item()
        grow.append(moved[i, 0.2] / moved[i, 0.1])
    assert grow == pytest.approx([4.0, 4.0], rel=1e-3)  # quadratic in the distance
    assert moved[hi, 0.1] == pytest.approx(2.0 / 2 * f.reshape(-1)[hi].item() * 0.01, rel=1e-3)
    assert moved[hi, 0.1] > 10 * moved[lo, 0.1]
    f1 = {k: v.clone() for k, v in s.fisher.items()}
    s.after_task(ctx)  # same model and data: F_t = F1, so F = 0.5 F1 + F1
    assert torch.allclose(s.fisher["heads.a.weight"], 1.5 * f1["heads.a.weight"])
