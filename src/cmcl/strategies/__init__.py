"""Continual-learning methods as plugins: one file per method, one registry, named hooks.

A method subclasses `Strategy`, decorates itself with `@register`, and overrides only the hooks
it needs (Avalanche-style). The training loop in cmcl.train calls the hooks in this order:

    before_task -> [per batch: extra_loss -> backward -> clip -> before_optimizer_step
                    -> optimizer.step -> after_optimizer_step] -> after_task -> state_tensors

Per-method state (covariances, buffers, anchors) is saved beside the step's checkpoint as
safetensors + JSON and handed back to the next step via `load_state`.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cmcl.models import MultiHead

REGISTRY: dict[str, type[Strategy]] = {}


@dataclass
class TaskContext:
    """What a hook may look at: the task, its data, the model and the loop's objects."""

    step: int
    task: str
    modalities: tuple[str, str]
    model: MultiHead  # the unwrapped model (projections act on its parameters)
    train: dict[str, Any]  # the task's train split: {modality: tensor (n, d), "labels": ...}
    cfg: dict
    extra: dict = field(default_factory=dict)


class Strategy:
    name: str = ""
    description: str = ""
    citation: str = ""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg

    # -- state carried from step to step ------------------------------------------------
    def load_state(self, directory: Path | None, model: MultiHead) -> None:
        """Load what the previous step saved (None at the first step)."""

    def save_state(self, directory: Path) -> None:
        """Write this step's state (safetensors + JSON) into `directory`."""

    # -- hooks ----------------------------------------------------------------------------
    def before_task(self, ctx: TaskContext) -> None: ...

    def extra_loss(self, ctx: TaskContext, batch: dict, emb: dict) -> torch.Tensor | None:
        return None

    def before_optimizer_step(self, ctx: TaskContext) -> None: ...

    def after_optimizer_step(self, ctx: TaskContext) -> None: ...

    def after_task(self, ctx: TaskContext) -> None: ...


def register(cls: type[Strategy]) -> type[Strategy]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} must set a `name`")
    REGISTRY[cls.name] = cls
    return cls


def discover() -> dict[str, type[Strategy]]:
    """Import every module of this package so each method registers itself."""
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
    return REGISTRY


def get_strategy(name: str, cfg: dict) -> Strategy:
    methods = discover()
    if name not in methods:
        raise ValueError(f"unknown method '{name}'; registered methods: {sorted(methods)}")
    return methods[name](cfg)
