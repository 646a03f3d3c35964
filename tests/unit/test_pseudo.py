"""COMM's Gaussian memory: pseudo features with the stored per-class moments."""

from __future__ import annotations

import pytest
import torch

from cmcl.strategies.pseudo import GaussianMemory

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gaussian_pseudo_features_have_the_stored_moments():
    g = torch.Generator().manual_seed(3)
    n, da, db = 400, 4, 3
    labels = torch.arange(n) % 2
    lat = torch.randn(n, 2, generator=g) * torch.tensor([3.0, 1.0])
    mix = torch.randn(2, da + db, generator=g)
    x = lat @ mix + 0.3 * torch.randn(n, da + db, generator=g) + 4.0 * labels[:, None]
    for cov in ("lowrank", "diag"):
        mem = GaussianMemory(cov, rank=2)
        mem.add_task(1, "t1", ("a", "b"), x[:, :da], x[:, da:], labels, g)
        assert mem.entries[0]["groups"] == [0, 1]
        xa, xb, grp = mem.sample(0, 40_000, torch.Generator().manual_seed(4))
        xs = torch.cat([xa, xb], 1)
        for k in (0, 1):
            data, fake = x[labels == k], xs[grp == k]
            assert torch.allclose(mem.stats[0]["mean"][k], data.mean(0), atol=1e-5)
            model_cov = mem.covariance_of(0, k)
            # every coordinate's variance is the data's, exactly
            assert torch.allclose(model_cov.diag(), data.var(0), rtol=1e-4)
            se = (model_cov.diag() / len(fake)).sqrt()
            assert ((fake.mean(0) - data.mean(0)).abs() < 5 * se).all()
            emp = torch.cov(fake.T)
            assert (emp - model_cov).abs().max() < 0.08 * model_cov.diag().max()
            cross = model_cov[:da, da:].abs().max()
            if cov == "lowrank":  # the a-b correlation of the pairs is kept
                data_cross = torch.cov(data.T)[:da, da:]
                assert (model_cov[:da, da:] - data_cross).abs().max() < 0.1 * data_cross.abs().max()
                assert cross > 0.5
            else:
                assert cross == 0
    mem = GaussianMemory()
    mem.add_task(1, "t1", ("a", "b"), x[:, :da], x[:, da:], torch.full((n,), -1), g)
    assert mem.entries[0]["groups"] == [-1]  # no classes: one Gaussian for the task
