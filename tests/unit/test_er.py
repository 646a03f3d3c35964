"""ER: streaming into the buffer (every epoch or the first) and training replayed heads."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.toy_latent import cfg, fit, fresh, new_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_er_streams_first_epoch_only_and_can_train_replayed_heads():
    model = new_model()
    for stream, seen in (("all", 3 * 64), ("first", 64)):
        s = fresh("er", model, memory_size=500, stream_epochs=stream)
        fit(copy.deepcopy(model), s, cfg("er"), ("a", "b"), 1)
        assert s.buffer.n_seen == seen == s.buffer.size
    for train_b in (False, True):
        m = copy.deepcopy(model)
        t = fresh("er", m, memory_size=500, train_replayed_heads=train_b)
        t.buffer = s.buffer
        b0 = m.heads["b"].weight.detach().clone()
        m = fit(m, t, cfg("er"), ("a", "c"), 2)[0]
        assert torch.equal(m.heads["b"].weight, b0) != train_b
        assert m.heads["b"].weight.grad is None  # nothing left behind on a frozen head
