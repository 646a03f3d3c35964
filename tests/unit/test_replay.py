"""The reservoir buffer behind the replay methods: a uniform sample of fixed size, and the
same decisions after a save and load."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from helpers.toy_latent import DIMS, EMBED

from cmcl.strategies.helpers.replay import ReservoirBuffer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_reservoir_keeps_a_uniform_sample_of_fixed_size():
    n, cap, seeds = 10_000, 100, 200
    counts = np.zeros(n)
    x = torch.zeros(n, 1)
    for seed in range(seeds):
        buf = ReservoirBuffer(cap, seed)
        for lo, hi in itertools.pairwise([0, 1, 8, 100, 600, *range(900, n, 300), n]):
            buf.add(x[lo:hi], x[lo:hi], ("a", "b"), torch.arange(lo, hi), 0)
            assert buf.size <= cap
        assert buf.size == cap and buf.n_seen == n
        kept = buf.labels.numpy()
        assert len(np.unique(kept)) == cap  # no item twice
        counts[kept] += 1
    expected = seeds * cap / n
    blocks = counts.reshape(10, -1).sum(1)  # position bias: early vs late items
    chi_blocks = ((blocks - blocks.mean()) ** 2 / blocks.mean()).sum()
    assert chi_blocks < 27.9, f"inclusion depends on position (chi2_9 = {chi_blocks:.1f})"
    chi_items = ((counts - expected) ** 2 / expected).sum()  # ~ chi2 with n - 1 dof
    assert abs(chi_items - (n - 1)) < 6 * math.sqrt(2 * (n - 1))


def test_reservoir_save_load_continues_the_same_decisions(tmp_path):
    g = torch.Generator().manual_seed(0)
    buf = ReservoirBuffer(20, 7, store_embeddings=True)
    for step, pair in ((1, ("a", "b")), (2, ("a", "c"))):
        for _ in range(5):
            xa, xb = (torch.randn(16, DIMS[m], generator=g) for m in pair)
            buf.add(xa, xb, pair, torch.arange(16), step, torch.randn(16, EMBED, generator=g),
                    torch.randn(16, EMBED, generator=g))
    buf.save(tmp_path, "buffer")
    loaded = ReservoirBuffer.load(tmp_path, "buffer")
    for _ in range(4):
        xa, xb, za, zb = (torch.randn(16, d, generator=g) for d in (6, 4, EMBED, EMBED))
        for b in (buf, loaded):
            b.add(xa, xb, ("a", "c"), torch.arange(16), 3, za, zb)
    for k in ("pair", "labels", "task"):
        assert torch.equal(getattr(buf, k), getattr(loaded, k))
    for m in DIMS:
        assert torch.equal(buf.feat[m], loaded.feat[m]) and torch.equal(buf.emb[m], loaded.emb[m])
    assert buf._json() == loaded._json()
    groups = loaded.sample(12, torch.Generator().manual_seed(1))
    assert sum(len(rb) for rb in groups) == 12
    assert {rb.pair for rb in groups} <= {("a", "b"), ("a", "c")}
    for rb in groups:  # each group reads its own modalities' tables
        assert rb.x[rb.pair[1]].shape[1] == DIMS[rb.pair[1]]
