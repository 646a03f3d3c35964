"""DER and DER++: which replay terms each adds, and what the buffer keeps."""

from __future__ import annotations

import pytest
import torch
from helpers.toy_latent import cfg, context, fit, fresh, new_model

from cmcl.strategies import get_strategy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_derpp_has_both_replay_terms_and_der_only_the_embedding_term():
    model = new_model()
    filler = fresh("derpp", model, memory_size=40)
    model = fit(model, filler, cfg("derpp", memory_size=40), ("a", "b"), 1)[0]
    assert filler.buffer.size == 40 and set(filler.buffer.emb) == {"a", "b"}
    with torch.no_grad():
        model.heads["a"].weight.add_(0.3 * torch.randn_like(model.heads["a"].weight))
    ctx = context(model, cfg("derpp"), ("a", "c"), step=2)
    batch = {m: ctx.train[m][:16] for m in ("a", "c")}
    emb = {m: model(m, batch[m]) for m in ("a", "c")}

    def loss(method, **opts):
        s = get_strategy(method, cfg(method, memory_size=40, **opts))
        s.buffer, s.gen = filler.buffer, torch.Generator().manual_seed(0)
        out = s.extra_loss(ctx, batch, emb)
        return 0.0 if out is None else out.item()

    none, mse, nce = loss("derpp", alpha=0, beta=0), loss("derpp", alpha=1, beta=0), \
        loss("derpp", alpha=0, beta=1)
    assert none == 0 and mse > 0 and nce > 0
    assert loss("derpp", alpha=1, beta=1) == pytest.approx(mse + nce, rel=1e-5)
    assert loss("der", alpha=1) == pytest.approx(mse, rel=1e-6)
    assert loss("der", alpha=0) == 0
    s = fresh("der", model, memory_size=40)  # insertion keeps the embeddings the loss saw
    s.before_task(ctx)
    assert s.extra_loss(ctx, batch, emb) is None  # empty buffer: nothing to replay
    ctx.batch = {**batch, "labels": torch.arange(16)}
    s.after_optimizer_step(ctx)
    assert s.buffer.size == 16 and torch.equal(s.buffer.emb["c"][:16], emb["c"].detach())
    with pytest.raises(ValueError, match="beta"):
        get_strategy("der", cfg("der", beta=1.0))
