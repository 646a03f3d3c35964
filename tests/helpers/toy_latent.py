"""The baselines' toy problem: two noisy views of a shared 3-d latent per modality pair
(inputs of 6, 5 and 4 dims, 4-d heads), labels the sample index, and the calls around it."""

from __future__ import annotations

import torch

from cmcl.models import MultiHead
from cmcl.strategies import TaskContext, get_strategy

DIMS = {"a": 6, "b": 5, "c": 4}
EMBED = 4


def cfg(method: str = "finetune", **opts) -> dict:
    return {"train": {"epochs": 3, "batch_size": 16, "lr": 0.05, "weight_decay": 0.01,
                      "grad_clip": 1.0},
            "loss": {"temperature": 0.1}, "methods": {method: opts}}


def pairs(pair: tuple[str, str], n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views of a shared 3-d latent, so the pair is learnable; one fixed map per modality
    (one encoder), so a new seed draws new pairs from the same distribution."""
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(n, 3, generator=g)
    maps = {m: torch.randn(3, DIMS[m], generator=torch.Generator().manual_seed(ord(m)))
            for m in pair}
    return tuple(lat @ maps[m] + 0.1 * torch.randn(n, DIMS[m], generator=g) for m in pair)


def new_model() -> MultiHead:
    model = MultiHead(DIMS, EMBED)
    model.reset("orthogonal", 0)
    return model


def context(model, c, pair, step=1, n=48, seed=1) -> TaskContext:
    xa, xb = pairs(pair, n, seed)
    return TaskContext(step, f"t{step}", pair, model,
                       {pair[0]: xa, pair[1]: xb, "labels": torch.arange(n)}, c)


def fit(model, strategy, c, pair, step, n=64, seed=None):
    from cmcl.train import fit_task

    xa, xb = pairs(pair, n, step if seed is None else seed)
    return fit_task(model, strategy, c, {"name": f"t{step}", "modalities": pair}, step, 0,
                    xa, xb, torch.arange(n))


def fresh(method: str, model, directory=None, **opts):
    s = get_strategy(method, cfg(method, **opts))
    s.load_state(directory, model)
    return s
