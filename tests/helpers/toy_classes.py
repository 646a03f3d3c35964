"""The added methods' toy problem: one input size for every modality (COMM's agnostic router
sees all of them), an optional class structure, and the calls around it."""

from __future__ import annotations

import torch

from cmcl.models import MultiHead
from cmcl.strategies import TaskContext, get_strategy
from cmcl.train import fit_task

DIMS = {"a": 6, "b": 6, "c": 6}  # one input size: COMM's agnostic router sees every modality
EMBED = 4


EQUAL_T = {"ird_current_temperature": 0.2, "ird_past_temperature": 0.2}


def cfg(method: str = "finetune", **opts) -> dict:
    return {"train": {"epochs": 3, "batch_size": 16, "lr": 0.05, "weight_decay": 0.01,
                      "grad_clip": 1.0},
            "loss": {"temperature": 0.1}, "methods": {method: opts}}


def pairs(pair, n: int, seed: int, classes: int = 0):
    """Two noisy views of a shared 3-d latent (one fixed map per modality); with `classes`,
    the latent is a class centre plus noise and the labels are the classes."""
    g = torch.Generator().manual_seed(seed)
    if classes:
        labels = torch.arange(n) % classes
        centres = 2 * torch.randn(classes, 3, generator=torch.Generator().manual_seed(7))
        lat = centres[labels] + 0.5 * torch.randn(n, 3, generator=g)
    else:
        labels, lat = torch.full((n,), -1), torch.randn(n, 3, generator=g)
    maps = {m: torch.randn(3, DIMS[m], generator=torch.Generator().manual_seed(ord(m)))
            for m in pair}
    xa, xb = (lat @ maps[m] + 0.1 * torch.randn(n, DIMS[m], generator=g) for m in pair)
    return xa, xb, labels


def new_model() -> MultiHead:
    model = MultiHead(DIMS, EMBED)
    model.reset("orthogonal", 0)
    return model


def fresh(method: str, model, directory=None, **opts):
    s = get_strategy(method, cfg(method, **opts))
    s.load_state(directory, model)
    return s


def fit(model, strategy, c, pair, step, n=64, classes=0):
    xa, xb, labels = pairs(pair, n, step, classes)
    return fit_task(model, strategy, c, {"name": f"t{step}", "modalities": pair}, step, 0,
                    xa, xb, labels)


def context(model, c, pair, step, n=48, classes=0) -> TaskContext:
    xa, xb, labels = pairs(pair, n, step, classes)
    return TaskContext(step, f"t{step}", pair, model, {pair[0]: xa, pair[1]: xb,
                                                       "labels": labels}, c)


def batch_of(ctx: TaskContext, n: int = 16) -> dict:
    a, b = ctx.modalities
    return {a: ctx.train[a][:n], b: ctx.train[b][:n], "labels": ctx.train["labels"][:n]}
