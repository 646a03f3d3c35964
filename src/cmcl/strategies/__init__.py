"""Continual-learning methods as plugins: one file per method, one registry, named hooks.

A method subclasses `Strategy`, decorates itself with `@register`, and overrides only the hooks
it needs (Avalanche-style). The training loop in cmcl.train calls the hooks in this order:

    load_state -> before_task -> train_inputs (once per modality of each part, as the batch
    loaders are built) -> trainable_parameters [-> load_task_state on resume]
    -> [per batch: embed -> extra_loss -> backward -> clip -> before_optimizer_step
    -> optimizer.step -> after_optimizer_step (-> task_state every train.checkpoint_every)]
    -> after_task -> save_state

Per-method state (covariances, buffers, anchors) is saved beside the step's checkpoint as
safetensors + JSON and handed back to the next step via `load_state`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cmcl.method_info import MethodInfo, resolve_options
from cmcl.models import MultiHead
from cmcl.resume import restore, snapshot
from cmcl.settings import StepConfig

REGISTRY: dict[str, type[Strategy]] = {}

# the shared learning rate every method's search space includes (AdamW on linear heads)
LR = {"type": "float", "low": 1e-3, "high": 0.1, "log": True}


def log_range(low: float, high: float) -> dict:
    """A log-uniform float range of a search space."""
    return {"type": "float", "low": low, "high": high, "log": True}


def choice(*choices) -> dict:
    """A categorical dimension of a search space."""
    return {"type": "categorical", "choices": list(choices)}


@dataclass
class TaskContext:
    """What a hook may look at: the task, its data, the model and the loop's objects."""

    step: int
    task: str
    modalities: tuple[str, str]
    model: MultiHead  # the unwrapped model (projections act on its parameters)
    train: dict[str, Any]  # the task's train split: {modality: tensor (n, d), "labels": ...}
    cfg: StepConfig  # a dict (tests, library callers) is typed on construction
    device: torch.device = torch.device("cpu")
    extra: dict = field(default_factory=dict)  # per-task log entries a method wants recorded
    batch: dict | None = None  # this process's slice of the current batch {modality: x, ...}
    epoch: int = 0
    loss_fn: Callable[[dict], torch.Tensor] | None = None  # recompute the loss (SAM-style methods)
    # slices of all processes, concatenated in rank order (= the global batch); identity with
    # one process. Methods whose state grows from batches (replay buffers) store gathered
    # tensors, so every process keeps the state a single process would have.
    gather: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda t: t)

    def __post_init__(self) -> None:
        self.cfg = StepConfig.of(self.cfg)


class Strategy:
    name: str = ""
    description: str = ""
    citation: str = ""
    # JSON schema of the method's options under `methods.<name>` in params.yaml (with defaults)
    options: dict = {"properties": {}}
    # True: the pipeline trains this method once on the union of all tasks (steps 0 and T only)
    joint: bool = False
    # options that cannot change the first step (no past yet): sweeps train it once and reuse it
    first_step_ignores: tuple[str, ...] = ()
    # what `snakemake tune` searches, with the same n_trials for every method: {key: spec} with
    # keys = option names or dotted params paths (train.lr); None = undeclared (tune refuses)
    space: dict | None = None
    # the option that holds the method's share of the shared memory budget (budget.samples):
    # {option: "samples"} (one buffer) or {option: "per_task"} (samples / number of tasks)
    budget: dict = {}

    def __init__(self, cfg: StepConfig | dict) -> None:
        self.cfg = StepConfig.of(cfg)
        self.opts = self.resolve_options(self.cfg.options(self.name))

    @classmethod
    def info(cls) -> MethodInfo:
        return MethodInfo(cls.name, cls.description, cls.citation, cls.options, cls.joint,
                          tuple(cls.first_step_ignores), cls.space, dict(cls.budget))

    @classmethod
    def resolve_options(cls, given: dict, where: str | None = None) -> dict:
        """Validate options against the method's schema and fill its defaults."""
        return resolve_options(cls.info(), given, where)

    # -- state carried from step to step ------------------------------------------------
    def load_state(self, directory: Path | None, model: MultiHead) -> None:
        """Load what the previous step saved (None at the first step)."""

    def save_state(self, directory: Path) -> None:
        """Write this step's state (safetensors + JSON) into `directory`."""

    def task_state(self) -> tuple[Any, dict[str, torch.Tensor]]:
        """What the per-batch hooks changed since before_task, as (JSON, tensors), saved with
        each preemption checkpoint. Default: a structural snapshot of the attributes."""

        return snapshot(self)

    def load_task_state(self, meta: Any, tensors: dict[str, torch.Tensor]) -> None:
        """Put task_state back on resume (after load_state and before_task ran as at the step
        start); tensors are written in place, so the optimizer keeps its parameters."""

        restore(self, meta, tensors)

    # -- what the model computes (evaluation calls `embed` too) ------------------------------
    def embed(self, model: torch.nn.Module, modality: str, x: torch.Tensor) -> torch.Tensor:
        """Embedding of features x; methods with prompts/adapters override this."""
        return model(modality, x)

    def train_inputs(self, ctx: TaskContext, modality: str, x: torch.Tensor) -> torch.Tensor:
        """The features the task's batches are drawn from (default: x itself), called once per
        task after before_task. Features are frozen, so a fixed map of the inputs (e.g. the
        rotation of cmcl.subspace.RotatedHeads) costs one pass here instead of one per batch
        and epoch. Rows must stay in order (the loader's shuffling is unchanged); ctx.batch then
        holds the mapped rows, while ctx.train keeps the untouched split."""
        return x

    def trainable_parameters(self, ctx: TaskContext) -> list[torch.nn.Parameter]:
        """Extra parameters the method trains besides the task's heads (after before_task)."""
        return []

    def extra_parameters(self) -> int:
        """Trainable parameters the method adds to the model in all (after load_state): the
        resources table counts them beside samples and bytes stored."""
        return 0

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
    """Import every module so each method registers itself (subpackages hold no methods)."""
    for mod in pkgutil.iter_modules(__path__):
        if not mod.ispkg:
            importlib.import_module(f"{__name__}.{mod.name}")
    return REGISTRY


def get_strategy(name: str, cfg: StepConfig | dict) -> Strategy:
    # a method's own module first: importing all of them costs ~0.5 s of CPU in every job
    if name not in REGISTRY and name.isidentifier() and (Path(__file__).parent /
                                                         f"{name}.py").is_file():
        importlib.import_module(f"{__name__}.{name}")
    methods = REGISTRY if name in REGISTRY else discover()
    if name not in methods:
        raise ValueError(f"unknown method '{name}'; registered methods: {sorted(methods)}")
    return methods[name](cfg)
