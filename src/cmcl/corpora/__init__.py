"""Corpus adapters: each turns one on-disk dataset layout into a stream of canonical samples.

A canonical `Sample` has an id, a split, an optional integer label and one value per modality:
inline text, or the bytes of a file (image, audio, npy features, ...). Sharding only ever sees
samples, so a new dataset layout is one new adapter module registered here.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cmcl.settings import CorpusSettings

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


def nfc(name: str) -> str:
    """A class name or label in Unicode NFC: a decomposed 'ü' (NFD) is the same class."""
    return unicodedata.normalize("NFC", name)


def class_names(classes: object, where: str) -> list[str] | None:
    """A declared class list as NFC strings; a non-string, or a name twice (also once
    normalised), is refused, naming `where`."""
    if classes is None:
        return None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{where}: `classes` must be a list of class-name strings, got "
                         f"{classes!r}")
    names = [nfc(c) for c in classes]
    twice = sorted({c for c in names if names.count(c) > 1})
    if twice:
        raise ValueError(f"{where}: `classes` lists {twice} more than once (compared in "
                         "Unicode NFC); each class is named once")
    return names


# class names of the builtin corpora, known before they are materialised: the torch-free
# Snakefile parse resolves task classes with them (cmcl.corpora.builtin imports torch)
BUILTIN_CLASSES = {"digits": ["zero", "one", "two", "three", "four", "five", "six", "seven",
                              "eight", "nine"]}


def resolve_classes(wanted: Sequence[int | str], classes: Sequence[str] | None,
                    where: str) -> list[int]:
    """A task's `classes` (indices or class names) as indices into the corpus's `classes`.

    An integer is an index (checked against the class list when there is one); a string is a
    class name, which needs the class list (names compare in Unicode NFC). `where` names the
    key (`tasks.<name>.classes`).
    """
    names = [nfc(c) for c in classes] if classes is not None else None
    allowed = (f"the corpus's classes are {names} (indices 0..{len(names) - 1})" if names
               else "the corpus declares no class list, so only indices are possible")
    out = []
    for c in wanted:
        if isinstance(c, str):
            if not names or nfc(c) not in names:
                raise ValueError(f"{where}: {c!r} is not a class name; {allowed}")
            out.append(names.index(nfc(c)))
        elif isinstance(c, bool) or not isinstance(c, int):
            raise ValueError(f"{where}: {c!r} is neither a class index nor a class name")
        elif c < 0 or (names is not None and c >= len(names)):
            raise ValueError(f"{where}: {c} is outside the class list; {allowed}")
        else:
            out.append(c)
    if len(set(out)) != len(out):
        raise ValueError(f"{where}: {list(wanted)} names a class twice (as indices {out})")
    return out


def _corpus_json(c: CorpusSettings) -> tuple[Path, dict] | None:
    """A generic corpus's corpus.json (path, contents) at start-up; None without one."""
    import json

    meta_file = Path(c.path) / "corpus.json"
    if c.adapter != "generic" or not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_file}: not valid JSON ({e.msg})") from None
    return meta_file, meta if isinstance(meta, dict) else {}


def startup_classes(corpus: Mapping) -> tuple[bool, list[str] | None]:
    """(known, class list) of a params corpus entry before any job runs: a builtin's names,
    or a generic corpus's corpus.json; other adapters are resolved when sharding."""
    c = CorpusSettings.of(corpus)
    if c.builtin in BUILTIN_CLASSES:
        return True, BUILTIN_CLASSES[c.builtin]
    if c.adapter != "generic" or not Path(c.path).is_dir():
        return False, None
    found = _corpus_json(c)
    if found is None:
        return True, None
    meta_file, meta = found
    return True, class_names(meta.get("classes"), str(meta_file))


def task_modality_problems(params: Mapping) -> list[str]:
    """A task modality that its generic corpus's corpus.json does not declare (known before
    any job runs; without corpus.json the manifest's columns decide, when sharding)."""
    problems = []
    for name, task in params["tasks"].items():
        corpus = params["corpora"].get(task["corpus"])
        found = _corpus_json(CorpusSettings.of(corpus)) if corpus is not None else None
        declared = found[1].get("modalities") if found else None
        if not isinstance(declared, Mapping):
            continue
        for m in task["modalities"]:
            if m not in declared:
                problems.append(f"tasks.{name}.modalities: '{m}' is not a modality of corpus "
                                f"'{task['corpus']}' ({found[0]} declares {sorted(declared)})")
    return problems


def task_class_problems(params: dict) -> list[str]:
    """Resolve every task's `classes` to indices in place, where the class list is known at
    start-up; one message per task whose classes are unknown names or out of range."""
    problems = []
    for name, task in params["tasks"].items():
        corpus = params["corpora"].get(task["corpus"])
        if not task.get("classes") or corpus is None:
            continue
        try:
            known, classes = startup_classes(corpus)
            if known:
                task["classes"] = resolve_classes(task["classes"], classes,
                                                  f"tasks.{name}.classes")
        except ValueError as e:
            problems.append(str(e))
    return problems


# samples(split=None, workers=1): the corpus's samples, only those of `split` if given, built
# in `workers` processes (see cmcl.corpora.media.stream)
SampleFactory = Callable[..., Iterator[Sample]]
Adapter = Callable[..., tuple[CorpusInfo, SampleFactory]]
ADAPTERS: dict[str, Adapter] = {}


ADAPTER_OPTIONS: dict[str, dict] = {}  # adapter -> its own options with their defaults
COMMON_OPTIONS = {"verify": True, "on_error": "raise"}  # every adapter's (cmcl.corpora.media)


def register_adapter(name: str, options: Mapping | None = None) -> Callable[[Adapter], Adapter]:
    """Register an adapter and its own `options:` keys with their defaults (checked at
    start-up, and by media.take_options when it runs)."""
    def deco(fn: Adapter) -> Adapter:
        ADAPTERS[name] = fn
        ADAPTER_OPTIONS[name] = dict(options or {})
        return fn

    return deco


# an adapter module declares itself with this decorator line, which start-up reads statically
DECLARED = re.compile(r'^@register_adapter\("([A-Za-z0-9_]+)"[,)]', re.M)


def known_options(adapter: str) -> dict:
    """Every `options:` key a registered adapter takes, with its default (its own and the
    common ones): what media.take_options fills and start-up checks against."""
    return {**COMMON_OPTIONS, **ADAPTER_OPTIONS[adapter]}


def adapter_option_problems(params: Mapping) -> list[str]:
    """A corpus's `options:` key its adapter does not take (before any job: only the modules
    of adapters given options are imported, none of which loads torch)."""
    problems, modules = [], declared_adapters()
    for name, entry in params["corpora"].items():
        c = CorpusSettings.of(entry)
        if not c.options or c.adapter not in modules:
            continue  # an unknown adapter is named by the adapter check
        importlib.import_module(f"{__name__}.{modules[c.adapter]}")
        known = known_options(c.adapter)
        for key in sorted(set(c.options) - set(known)):
            close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.7)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"corpora.{name}.options.{key}: not an option of adapter "
                            f"'{c.adapter}'{hint}; it takes {sorted(known)}")
    return problems


def declared_adapters() -> dict[str, str]:
    """{adapter: the module of this package declaring it}, read from the sources: known at
    start-up without importing them (some load torch or media libraries)."""
    return {n: f.stem for f in sorted(Path(__file__).parent.glob("*.py"))
            for n in DECLARED.findall(f.read_text(encoding="utf-8"))}


def adapter_names() -> list[str]:
    """Every adapter a module of this package declares (declared_adapters)."""
    return sorted(declared_adapters())


def _register_all() -> None:
    """Import every module of this package once, so an adapter is one new file here."""
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


def open_corpus(name: str, path: str | Path, adapter: str = "generic",
                options: dict | None = None):
    """Return (info, samples) for the corpus at `path`; `samples(split=None, workers=1)`.

    `options` (the params entry's `options:` mapping) go to the adapter as keyword arguments.
    An adapter whose factory takes no arguments (written before splits were passed) still
    works: its samples are filtered by split here, and built in one process.
    """
    _register_all()
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
