"""Corpus adapters: each turns one on-disk dataset layout into a stream of canonical samples.

A canonical `Sample` has an id, a split, an optional integer label and one value per modality:
inline text, or the bytes of a file (image, audio, npy features, ...). Sharding only ever sees
samples, so a new dataset layout is one new adapter module registered here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

TEXT_MODALITIES = frozenset({"text"})


@dataclass
class Sample:
    id: str
    split: str
    label: int | None
    # modality -> (extension, payload): ("txt", str) for text, ("png", bytes) for files
    data: dict[str, tuple[str, bytes | str]] = field(default_factory=dict)
    # set instead of data when the adapter skipped a bad sample (`on_error: skip`): the reason,
    # which sharding lists in rejected.jsonl
    error: str | None = None


@dataclass
class CorpusInfo:
    """What every adapter reports besides its samples: class names and prompt templates."""

    name: str
    modalities: dict[str, str]  # modality -> "inline" | "file"
    classes: list[str] | None = None
    templates: list[str] | None = None


def disjoint_splits(ids_by_split: Mapping[str, Iterable[str]], where: str) -> None:
    """Refuse ids that sit in more than one split (train/test overlap), naming a few."""
    home: dict[str, str] = {}
    shared: dict[str, list[str]] = {}
    for split, ids in ids_by_split.items():
        for sid in ids:
            other = home.setdefault(sid, split)
            if other != split:
                shared.setdefault(sid, [other]).append(split)
    if shared:
        few = ", ".join(f"{sid!r} ({' and '.join(dict.fromkeys(s))})"
                        for sid, s in list(shared.items())[:5])
        raise ValueError(f"{where}: {len(shared)} sample id(s) are in more than one split "
                         f"(train/test overlap), e.g. {few}; each sample belongs to one split")


# samples(split=None, workers=1): the corpus's samples, only those of `split` if given, built
# in `workers` processes (see cmcl.corpora.media.stream)
SampleFactory = Callable[..., Iterator[Sample]]
Adapter = Callable[..., tuple[CorpusInfo, SampleFactory]]
ADAPTERS: dict[str, Adapter] = {}


def register_adapter(name: str) -> Callable[[Adapter], Adapter]:
    def deco(fn: Adapter) -> Adapter:
        ADAPTERS[name] = fn
        return fn

    return deco


def open_corpus(name: str, path: str | Path, adapter: str = "generic",
                options: dict | None = None):
    """Return (info, samples) for the corpus at `path`; `samples(split=None, workers=1)`.

    `options` (the params entry's `options:` mapping) go to the adapter as keyword arguments.
    An adapter whose factory takes no arguments (written before splits were passed) still
    works: its samples are filtered by split here, and built in one process.
    """
    from cmcl.corpora import features_h5, generic, paper  # noqa: F401  (registers adapters)

    if adapter not in ADAPTERS:
        raise ValueError(f"corpus '{name}': unknown adapter '{adapter}'; known: {sorted(ADAPTERS)}")
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"corpus '{name}': folder {path} does not exist")
    info, factory = ADAPTERS[adapter](name, path, **(options or {}))
    return info, _split_aware(factory)


def _split_aware(factory: Callable) -> SampleFactory:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    if "split" in params:
        return factory

    def samples(split: str | None = None, workers: int = 1) -> Iterator[Sample]:
        stream = factory()
        return stream if split is None else (s for s in stream
                                             if s.error is not None or s.split == split)

    return samples
