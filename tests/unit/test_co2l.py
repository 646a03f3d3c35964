"""Co²L: the asymmetric SupCon loss (past rows only as negatives) and the buffer of past
samples, its labels unused, its distillation term zero at the start."""

from __future__ import annotations

import pytest
import torch
from helpers.toy_classes import EQUAL_T, batch_of, cfg, context, fresh, new_model

from cmcl.strategies.co2l import asym_supcon

pytestmark = pytest.mark.usefixtures("one_thread")


def supcon_by_hand(z, keys, n_cur: int, t: float) -> float:
    """Anchors: the first n_cur rows; positives: other anchors with the same key; every other
    row (past ones included) in the denominator."""
    zn = torch.nn.functional.normalize(z.detach(), dim=-1)
    s = zn @ zn.T / t
    per = []
    for i in range(n_cur):
        lse = torch.logsumexp(s[i, [k for k in range(len(z)) if k != i]], 0)
        pos = [j for j in range(n_cur) if j != i and keys[j] == keys[i]]
        if pos:
            per.append(-torch.stack([s[i, j] - lse for j in pos]).mean())
    return torch.stack(per).mean().item()


def test_asym_supcon_uses_past_rows_only_as_negatives():
    g = torch.Generator().manual_seed(0)
    n_cur, n_past = 10, 6
    z = torch.randn(n_cur + n_past, 5, generator=g, requires_grad=True)
    keys = torch.cat([torch.tensor([0, 1, 2, 0, 1, 2, 3, 3, -1, -2]), torch.arange(n_past) % 3])
    anchor = torch.arange(n_cur + n_past) < n_cur
    loss = asym_supcon(z, keys, anchor, 0.5)
    assert loss.item() == pytest.approx(supcon_by_hand(z, keys, n_cur, 0.5), rel=1e-6)
    # past labels never matter, not even when they equal the anchors' classes
    for past_keys in (keys[:n_past].clone(), torch.zeros(n_past, dtype=torch.long)):
        k2 = torch.cat([keys[:n_cur], past_keys])
        assert asym_supcon(z, k2, anchor, 0.5).item() == loss.item()
    perm = torch.cat([torch.arange(n_cur), n_cur + torch.randperm(n_past, generator=g)])
    assert asym_supcon(z[perm], keys[perm], anchor, 0.5).item() == pytest.approx(loss.item())
    # they are negatives: removing them lowers the loss, and they receive a gradient
    assert asym_supcon(z[:n_cur], keys[:n_cur], anchor[:n_cur], 0.5) < loss
    loss.backward()
    assert z.grad[n_cur:].norm() > 0


def test_co2l_buffer_is_past_only_labels_unused_and_ird_zero_at_start():
    model = new_model()
    s = fresh("co2l", model, memory_size=30, **EQUAL_T)
    c = cfg("co2l", memory_size=30, **EQUAL_T)
    s.after_task(context(model, c, ("a", "b"), 1, classes=3))
    assert s.buffer.size == 30 and set(s.buffer.task.tolist()) == {1}
    ctx = context(model, c, ("a", "c"), 2, classes=3)
    s.before_task(ctx)
    batch = batch_of(ctx)

    def terms():
        s.gen = torch.Generator().manual_seed(5)
        return s.terms(ctx, batch, {m: model(m, batch[m]) for m in ("a", "c")})

    t0 = terms()
    assert t0["ird"].item() == pytest.approx(0.0, abs=1e-7)  # the model is the past model
    # the same SupCon by hand: current pairs are the anchors, the replayed pairs only negatives
    with torch.no_grad():
        cur = torch.cat([model("a", batch["a"]), model("c", batch["c"])])
        past = [model(m, rb.x[m]) for rb in s.buffer.sample(16, torch.Generator().manual_seed(5))
                for m in rb.pair]
    keys = batch["labels"].repeat(2)
    assert keys.unique().numel() == 3 and (keys >= 0).all()  # class positives exist
    ref = supcon_by_hand(torch.cat([cur, *past]), keys, len(cur), s.opts["temperature"])
    assert t0["supcon"].item() == pytest.approx(ref, rel=1e-5)
    s.buffer.labels[:] = 0  # past pairs now share class 0 with current anchors
    assert terms()["supcon"].item() == t0["supcon"].item()
    s.buffer.feat["b"][:] = 0.0  # but their features (negatives) do matter
    assert terms()["supcon"].item() != t0["supcon"].item()
    with torch.no_grad():
        model.heads["a"].weight.add_(0.3 * torch.randn_like(model.heads["a"].weight))
    assert terms()["ird"].item() > 1e-4
