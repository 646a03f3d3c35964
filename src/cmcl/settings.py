"""Typed job configs: what each stage's job reads, as frozen dataclasses built from its --cfg.

`cmcl.stages` decides *which* values a job gets (and which of them can change a result); this
module gives them types, so the training loop, the methods and evaluation read
`cfg.train.batch_size` instead of `cfg["train"].get("batch_size", 64)`. Defaults still live
only in the schema: `Section.of()` fills a section from it and refuses a key its dataclass does
not name (tests/unit/test_settings.py holds every dataclass to its schema section). Torch-free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from cmcl.identity import MATRIX
from cmcl.schema import defaults

S = TypeVar("S", bound="Section")

# the DNS authors' code: tau = 1, raw dot products, a->b only (losses.info_nce's arguments)
LOSS_PRESETS = {"paper": {"temperature": 1.0, "normalize": False, "symmetric": False}}


class Section:
    """A params section as a typed record: `of()` takes the section (partial or whole)."""

    NAME: ClassVar[str]
    SKIP: ClassVar[tuple[str, ...]] = ()  # keys of the section a job never reads
    ENTRY: ClassVar[bool] = False  # one entry of the named section (a corpus of `corpora`)

    @classmethod
    def of(cls: type[S], values: Mapping | S | None) -> S:
        """`values` as this type, the keys they leave out from the schema's defaults."""
        if isinstance(values, cls):
            return values
        given = {k: v for k, v in (values or {}).items() if k not in cls.SKIP}
        filled = {**{k: v for k, v in defaults(cls.NAME, cls.ENTRY).items()
                     if k not in cls.SKIP}, **given}
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        if unknown := sorted(set(filled) - names):
            raise ValueError(f"{cls.NAME}: unknown key(s) {unknown}; {cls.__name__} reads "
                             f"{sorted(names)}")
        optional = {f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                    if f.default is not dataclasses.MISSING}
        if missing := sorted(names - set(filled) - optional):
            raise ValueError(f"{cls.NAME}: no value for {missing} (the schema has no default)")
        return cls(**filled)


class CappedShards:
    """A section with max_shard_mb: the tar size cap its writer takes, in bytes."""

    max_shard_mb: float | None

    def max_shard_bytes(self) -> int | None:
        return None if self.max_shard_mb is None else int(self.max_shard_mb * 1e6)


@dataclass(frozen=True)
class CorpusSettings(Section):
    """One `corpora` entry (adapter options stay the adapter's to read and check)."""

    NAME = "corpora"
    ENTRY = True

    path: str
    adapter: str
    options: dict
    test_fraction: float
    seed: int
    builtin: str | None = None  # materialise this embedded corpus into `path`


@dataclass(frozen=True)
class ModelSettings(Section):
    NAME = "model"

    embed_dim: int
    bias: bool
    init: str


@dataclass(frozen=True)
class LossSettings(Section):
    NAME = "loss"

    preset: str
    temperature: float
    normalize: bool
    symmetric: bool

    def nce(self) -> dict[str, Any]:
        """info_nce's arguments: the explicit values, a named preset's winning over them."""
        out = {"temperature": self.temperature, "normalize": self.normalize,
               "symmetric": self.symmetric}
        return out | LOSS_PRESETS.get(self.preset, {})


@dataclass(frozen=True)
class TrainSettings(Section):
    """One step's optimisation settings."""

    NAME = "train"
    SKIP = tuple(k.removeprefix("train.") for k in MATRIX)  # the matrix around the step

    preset: str
    epochs: int
    batch_size: int
    drop_last: bool
    lr: float
    lr_schedule: str
    warmup_steps: int
    warmup_fraction: float
    weight_decay: float
    decay_biases: bool
    grad_clip: float | None
    deterministic: bool
    cpu: bool
    checkpoint_every: int


@dataclass(frozen=True)
class EvalSettings(Section):
    NAME = "eval"

    ks: tuple[int, ...]
    n_subsets: int
    subset_size: int
    seed: int
    batch_size: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "ks", tuple(self.ks))  # JSON gives a list


@dataclass(frozen=True)
class ShardSettings(Section, CappedShards):
    NAME = "shard"

    samples_per_shard: int
    max_per_class: int | None
    max_shard_mb: float | None
    workers: int


@dataclass(frozen=True)
class EmbedSettings(Section, CappedShards):
    NAME = "embed"

    encoders: dict[str, str]
    batch_size: int
    dtype: str
    storage_dtype: str | None
    processes: int
    max_shard_mb: float | None


@dataclass(frozen=True)
class ReportSettings(Section):
    NAME = "report"

    main_metric: str
    expected: str | None


def relevance(task: Mapping) -> str:
    """A task's retrieval hit rule: its `relevance`, else label-aware for class pairing and
    instance otherwise (the schema's documented default, applied here for every consumer)."""
    return task.get("relevance") or ("label" if task.get("pairing") == "class" else "instance")


@dataclass(frozen=True)
class StepConfig:
    """An init or training step: the model, loss and train sections, the task(s) it trains on
    (None at step 0), and the options of the method(s) it may build (`methods.<name>`)."""

    model: ModelSettings
    loss: LossSettings
    train: TrainSettings
    task: Mapping | None = None
    method: str | None = None  # only a variant names the method it runs
    methods: Mapping[str, Mapping] = field(default_factory=dict)

    @classmethod
    def of(cls, cfg: StepConfig | Mapping) -> StepConfig:
        """A job's --cfg (or params, or a partial dict of a library caller) as a StepConfig."""
        if isinstance(cfg, StepConfig):
            return cfg
        return cls(ModelSettings.of(cfg.get("model")), LossSettings.of(cfg.get("loss")),
                   TrainSettings.of(cfg.get("train")), task=cfg.get("task"),
                   method=cfg.get("method"), methods=dict(cfg.get("methods") or {}))

    def options(self, method: str) -> dict:
        """What params give `methods.<method>` (the method's schema fills the rest)."""
        return dict(self.methods.get(method) or {})

    def with_train(self, **changes: Any) -> StepConfig:
        return dataclasses.replace(self, train=dataclasses.replace(self.train, **changes))

    def as_dict(self) -> dict:
        """The plain form (what a resume fingerprint hashes)."""
        out = {"model": dataclasses.asdict(self.model), "loss": dataclasses.asdict(self.loss),
               "train": dataclasses.asdict(self.train), "methods": dict(self.methods)}
        if self.task is not None:
            out["task"] = self.task
        if self.method is not None:
            out["method"] = self.method
        return out


@dataclass(frozen=True)
class EvalConfig:
    """Scoring a run's steps: the loss (whether embeddings are normalised) and eval sections,
    on the test splits of a sequence's tasks."""

    loss: LossSettings
    eval: EvalSettings
    sequence: str = "default"
    tasks: tuple[Mapping, ...] = ()

    @classmethod
    def of(cls, cfg: EvalConfig | Mapping) -> EvalConfig:
        if isinstance(cfg, EvalConfig):
            return cfg
        return cls(LossSettings.of(cfg.get("loss")), EvalSettings.of(cfg.get("eval")),
                   cfg.get("sequence", "default"), tuple(cfg.get("tasks") or ()))
