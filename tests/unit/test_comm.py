"""COMM: two tasks with a reload between them, evaluation through the adapters, and the
self-regulariser zero until the model moves."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.toy_classes import batch_of, cfg, context, fit, fresh, new_model, pairs

from cmcl.io import write_json
from cmcl.train import load_strategy

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("identity", [True, False])
def test_comm_two_tasks_reload_and_evaluation_sees_the_adapters(identity, tmp_path):
    torch.manual_seed(0)
    opts = {"modality_identity": identity, "pool_size": 3, "rank": 2}
    c = cfg("comm", **opts)
    s = fresh("comm", new_model(), **opts)
    model, log1 = fit(new_model(), s, c, ("a", "b"), 1, classes=4)
    s.save_state(tmp_path / "s1")
    s2 = fresh("comm", model, tmp_path / "s1", **opts)
    model, log2 = fit(model, s2, c, ("a", "c"), 2)
    (tmp_path / "s2" / "state").mkdir(parents=True)
    s2.save_state(tmp_path / "s2" / "state")
    write_json(tmp_path / "s2" / "meta.json", {"method": "comm", "options": s2.opts})
    assert all(math.isfinite(v) for v in log1["epoch_loss"] + log2["epoch_loss"])
    assert log1["comm_pseudo_groups"] == 4 and log2["comm_pseudo_groups"] == 1

    evaluated = load_strategy(tmp_path / "s2", model)  # what evaluation embeds through
    assert type(evaluated) is type(s2) and evaluated.opts == s2.opts
    x = torch.randn(20, 6, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        for m in "abc":
            assert torch.equal(evaluated.embed(model, m, x), s2.embed(model, m, x))
            assert not torch.allclose(evaluated.embed(model, m, x), model(m, x))  # adapters act

    for m in "abc":
        names, r = evaluated.route(m, x)
        assert torch.allclose(r.sum(1), torch.ones(len(x)))
        mixed = x + sum(r[:, j:j + 1] * evaluated.ad.delta(p, x) for j, p in enumerate(names))
        with torch.no_grad():  # embed = head(x + Σ_j R_j(x) Δ_j(x))
            assert torch.allclose(evaluated.embed(model, m, x), model(m, mixed), atol=1e-6)
        if identity:
            assert names == [m] and torch.equal(r, torch.ones(len(x), 1))
        else:
            assert names == ["a", "b", "c"]
    if identity:  # the given modality's pool alone acts: another pool changing changes nothing
        before = evaluated.embed(model, "a", x)
        evaluated.ad.pools["b"]["up"].add_(1.0)
        assert torch.equal(evaluated.embed(model, "a", x), before)
    else:  # the learned router recognises the modality of fresh inputs
        hits = []
        for m in "abc":  # b was seen in task 1 only (class-structured inputs)
            xm = pairs((m, "a" if m != "a" else "b"), 60, 11, 4 if m == "b" else 0)[0]
            names, r = evaluated.route(m, xm)
            hits.append((r.argmax(1) == names.index(m)).float().mean())
        assert min(hits) > 0.6, hits


def test_comm_self_regulariser_is_zero_until_the_model_moves():
    model = new_model()
    c = cfg("comm", realign_weight=0.0)
    s = fresh("comm", model, realign_weight=0.0)
    ctx1 = context(model, c, ("a", "b"), 1)
    s.before_task(ctx1)
    with torch.no_grad():
        s.ad.pools["a"]["up"].normal_()  # a trained-looking pool
    s.after_task(ctx1)
    ctx = context(model, c, ("a", "c"), 2)
    s.before_task(ctx)
    batch = batch_of(ctx)

    def reg():
        return s.terms(ctx, batch, {m: s.embed(model, m, batch[m]) for m in "ac"})["reg"].item()

    assert reg() == 0.0
    with torch.no_grad():
        s.ad.pools["a"]["down"].add_(0.5)
    assert reg() > 1e-4
