"""LwF: the distillation term is zero until the model changes, per target and heads option."""

from __future__ import annotations

import pytest
import torch
from helpers.toy_latent import cfg, context, fresh, new_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("opts", "seen"), [
    ({}, "ab"), ({"distance": "mse"}, "ab"), ({"target": "embedding"}, "ab"),
    ({"target": "both"}, "a"), ({}, "a"), ({"heads": "all"}, "")])
def test_lwf_term_is_zero_until_the_model_changes(opts, seen):
    model = new_model()
    s = fresh("lwf", model, **opts)
    ctx = context(model, cfg("lwf", **opts), ("a", "b"), step=2)
    batch = {m: ctx.train[m][:16] for m in ("a", "b")}

    def term():
        out = s.extra_loss(ctx, batch, {m: model(m, batch[m]) for m in "ab"})
        return None if out is None else out.item()

    s.before_task(ctx)
    assert term() is None  # first task: nothing to distil
    s.tasks, s.seen = ["t1"], list(seen)
    s.before_task(ctx)
    assert term() == 0.0
    with torch.no_grad():
        model.heads["b"].weight.add_(0.2 * torch.randn_like(model.heads["b"].weight))
    if "b" not in seen and s.opts["heads"] == "seen":
        assert term() == 0.0  # a head first met now is free to learn
    with torch.no_grad():
        model.heads["a"].weight.add_(0.2 * torch.randn_like(model.heads["a"].weight))
    assert term() > 1e-4
