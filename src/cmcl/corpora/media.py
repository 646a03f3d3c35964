"""What the paper's dataset adapters share: options, safe file reads, header probes, bad samples.

Every adapter reads a dataset in the layout it is distributed in, so each one needs the same
guarantees as the generic adapter: a bad sample (missing or unreadable file, unknown label)
stops the job with an error naming the corpus, the sample id and the file, unless the user
opted into skipping bad samples (`on_error: skip`), in which case each skip is logged.
Decoding libraries (soundfile, PyAV) are imported only when a probe or an extraction needs them.
"""

from __future__ import annotations

import io
import itertools
import logging
import multiprocessing as mp
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from cmcl.corpora import Sample, SampleFactory

log = logging.getLogger("cmcl.corpora")

IMAGE_EXT = frozenset({"png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp"})
AUDIO_EXT = frozenset({"wav", "flac", "ogg", "mp3"})
VIDEO_EXT = frozenset({"mp4", "avi", "mkv", "webm", "mov"})
COMMON = {"verify": True, "on_error": "raise"}


class SampleError(ValueError):
    """One bad sample: the only error `on_error: skip` may swallow; `sample_id` names it in
    rejected.jsonl."""

    def __init__(self, message: str, sample_id: str | None = None) -> None:
        super().__init__(message)
        self.sample_id = sample_id


class MissingFile(SampleError, FileNotFoundError):
    """A file named by the dataset's metadata is not on disk."""


def take_options(corpus: str, adapter: str, options: Mapping[str, Any],
                 defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with the user's options; an unknown key or bad common value is refused."""
    known = {**COMMON, **defaults}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"corpus '{corpus}': unknown option(s) {unknown} for adapter "
                         f"'{adapter}'; known: {sorted(known)}")
    opts = {**known, **options}
    if opts["on_error"] not in ("raise", "skip"):
        raise ValueError(f"corpus '{corpus}': option on_error must be 'raise' or 'skip', "
                         f"not {opts['on_error']!r}")
    return opts


def need(corpus: str, file: Path) -> Path:
    """A metadata file the whole corpus depends on: its absence is not a per-sample problem."""
    if not file.is_file():
        raise FileNotFoundError(f"corpus '{corpus}': metadata file {file} does not exist")
    return file


def readable(name: str) -> str:
    """'ApplyEyeMakeup' -> 'apply eye makeup', 'crying_baby' -> 'crying baby': prompt text."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name.replace("_", " "))
    return " ".join(spaced.lower().split())


class Inside:
    """Is a file inside `root` once symlinks are resolved? Each folder is resolved once, so
    the check costs one lstat per file instead of one per path component."""

    def __init__(self, root: Path) -> None:
        self.root, self.dirs = root.resolve(), {}

    def __call__(self, file: Path) -> bool:
        if file.name in ("", ".", "..") or file.is_symlink():
            return file.resolve().is_relative_to(self.root)
        real = self.dirs.get(file.parent)
        if real is None:
            real = self.dirs[file.parent] = file.parent.resolve()
        return (real / file.name).is_relative_to(self.root)


class Reader:
    """Reads sample files below a corpus root, probing their headers when `verify` is on."""

    def __init__(self, corpus: str, root: Path, verify: bool = True) -> None:
        self.corpus, self.root, self.verify = corpus, root, verify
        self._inside = Inside(root)

    def error(self, sid: str, msg: str) -> SampleError:
        return SampleError(f"corpus '{self.corpus}': sample '{sid}': {msg}", sid)

    def path(self, sid: str, modality: str, rel: str | Path) -> Path:
        file = self.root / rel
        if not self._inside(file):
            raise self.error(sid, f"{modality} path {str(rel)!r} leaves the corpus folder")
        return file

    def read(self, sid: str, modality: str, rel: str | Path) -> tuple[str, bytes]:
        """(extension, bytes) of one file; missing, unreadable or undecodable -> SampleError."""
        file = self.path(sid, modality, rel)
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            raise MissingFile(f"corpus '{self.corpus}': sample '{sid}': {modality} file {file} "
                              "does not exist", sid) from None
        except OSError as e:
            raise self.error(sid, f"{modality} file {file} is unreadable ({e})") from None
        ext = file.suffix.lstrip(".").lower() or "bin"
        if self.verify:
            try:
                probe(ext, data)
            except ImportError:
                raise
            except Exception as e:  # decoders raise their own types
                raise self.error(sid, f"{modality} file {file} is unreadable ({e})") from None
        return ext, data


def probe(ext: str, data: bytes) -> None:
    """Parse the header of an image, audio or video payload; raise if it is not one."""
    if not data:
        raise ValueError("empty file")
    if ext in IMAGE_EXT:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    elif ext in AUDIO_EXT:
        sf = _import("soundfile", "soundfile")
        info = sf.info(io.BytesIO(data))
        if info.frames <= 0:
            raise ValueError("no audio frames")
    elif ext in VIDEO_EXT:
        av = _import("av", "av (PyAV)")
        with av.open(io.BytesIO(data)) as c:
            if not c.streams.video:
                raise ValueError("no video stream")


def _import(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"reading this corpus needs the package {package} "
                          "(see pyproject.toml's optional dependencies)") from None


def audio_track_wav(data: bytes, rate: int | None = 16000, channels: int | None = 1) -> bytes:
    """The audio track of a video container, decoded to 16-bit PCM WAV bytes (PyAV, in memory).

    Why WAV: every audio encoder reads it, and the shard then holds exactly what the encoder
    sees; resampling once here (default 16 kHz mono, what ImageBind/LanguageBind consume)
    keeps shards small.
    """
    import numpy as np

    av = _import("av", "av (PyAV)")
    sf = _import("soundfile", "soundfile")
    with av.open(io.BytesIO(data)) as c:
        if not c.streams.audio:
            raise ValueError("no audio track")
        stream = c.streams.audio[0]
        layout = {1: "mono", 2: "stereo"}.get(channels or 0, stream.layout.name)
        out_rate = rate or stream.rate
        resampler = av.AudioResampler(format="s16", layout=layout, rate=out_rate)
        chunks = []
        for frame in c.decode(stream):
            chunks.extend(f.to_ndarray() for f in resampler.resample(frame))
        chunks.extend(f.to_ndarray() for f in resampler.resample(None))
    if not chunks:
        raise ValueError("empty audio track")
    n_ch = len(av.AudioLayout(layout).channels)
    # packed s16 frames come as (1, samples * channels): interleaved
    pcm = np.concatenate([ch.reshape(-1) for ch in chunks]).reshape(-1, n_ch)
    buf = io.BytesIO()
    sf.write(buf, pcm, out_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def iterate(rows: Iterable, build: Callable[[Any], Sample], on_error: str,
            workers: int = 1) -> Iterator[Sample]:
    """Build one sample per metadata row; bad samples raise, or are skipped and reported.

    A skipped sample is yielded as a `Sample` carrying only `error`, so sharding can list it
    in rejected.jsonl (nothing is skipped silently). With `workers` > 1 the rows are built
    (files read, probed, decoded) in that many processes; samples still come in row order.
    """
    skipped = 0
    for i, (sample, err) in enumerate(ordered_map(_attempt, rows, workers, build)):
        if err is not None:
            if on_error == "raise":
                raise err
            skipped += 1
            log.warning("skipping bad sample: %s", err)
            yield Sample(getattr(err, "sample_id", None) or f"row{i}", "", None, error=str(err))
            continue
        yield sample
    if skipped:
        log.warning("skipped %d bad sample(s)", skipped)


def stream(rows: Iterable | Callable[[], Iterable], build: Callable[[Any], Sample],
           on_error: str, split_of: Callable[[Any], str]) -> SampleFactory:
    """An adapter's sample factory: `samples(split=None, workers=1)`.

    `split_of(row)` reads a row's split from the metadata alone, so asking for one split never
    reads or decodes the files of the others (VGGSound, UCF101: most of the bytes).
    """

    def samples(split: str | None = None, workers: int = 1) -> Iterator[Sample]:
        chosen = rows() if callable(rows) else rows
        if split is not None:
            chosen = (r for r in chosen if split_of(r) == split)
        return iterate(chosen, build, on_error, workers)

    return samples


def _attempt(build: Callable[[Any], Sample], row: Any) -> tuple[Sample | None,
                                                              SampleError | None]:
    try:
        return build(row), None
    except SampleError as e:
        return None, e


_FN: Callable | None = None  # the worker processes' function (inherited through fork)


def _init(fn: Callable) -> None:
    global _FN
    _FN = fn


def _chunk(fn: Callable, items: list) -> list:
    return [fn(_FN, x) for x in items]


def ordered_map(fn: Callable[[Any, Any], Any], items: Iterable, workers: int, arg: Any,
                chunk: int = 4) -> Iterator:
    """fn(arg, item) for each item, in order, over `workers` forked processes.

    Why fork: adapters' build functions are closures (not picklable); forked workers inherit
    them. Only rows and built samples cross the pipe. At most 2 chunks per worker are in flight,
    so a fast producer never piles decoded videos up in memory.
    """
    if workers <= 1 or "fork" not in mp.get_all_start_methods():
        yield from (fn(arg, x) for x in items)
        return
    with mp.get_context("fork").Pool(workers, _init, (arg,)) as pool:
        pending: deque = deque()
        it = iter(items)
        while True:
            block = list(itertools.islice(it, chunk))
            if block:
                pending.append(pool.apply_async(_chunk, (fn, block)))
            if pending and (not block or len(pending) >= 2 * workers):
                yield from pending.popleft().get()
            elif not block:
                return
