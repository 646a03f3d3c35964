"""What every corpus adapter shares: options, safe file reads, decode probes, bad samples.

Every adapter reads a dataset in the layout it is distributed in, and each one (the generic
layout's too) gives the same guarantees: a bad sample (missing, unreadable, corrupt or
truncated file, unknown label) is caught at sharding time and stops the job with an error
naming the corpus, the sample id and the file, unless the user opted into skipping bad samples
(`on_error: skip`), in which case each skip is logged and listed in rejected.jsonl.
Decoding libraries (soundfile, PyAV) are imported only when a probe or an extraction needs them.
"""

from __future__ import annotations

import functools
import inspect
import io
import itertools
import logging
import multiprocessing as mp
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from cmcl.corpora import Sample, SampleFactory, disjoint_splits, known_options

log = logging.getLogger("cmcl.corpora")

IMAGE_EXT = frozenset({"png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp"})
AUDIO_EXT = frozenset({"wav", "flac", "ogg", "mp3"})
VIDEO_EXT = frozenset({"mp4", "avi", "mkv", "webm", "mov"})


# `<_io.BytesIO object at 0x7f...>`: PIL names the stream it read, which tells the user nothing
OBJECT_REPR = re.compile(r" ?<[\w.]+ object at 0x[0-9a-fA-F]+>")


def error_text(e: BaseException) -> str:
    """A decoder's message without the in-memory objects it names (`cannot identify image file
    <_io.BytesIO object at 0x7f...>` -> `cannot identify image file`)."""
    return OBJECT_REPR.sub("", str(e)).strip()


class SampleError(ValueError):
    """One bad sample: the only error `on_error: skip` may swallow; `sample_id` names it in
    rejected.jsonl."""

    def __init__(self, message: str, sample_id: str | None = None) -> None:
        super().__init__(message)
        self.sample_id = sample_id


class MissingFile(SampleError, FileNotFoundError):
    """A file named by the dataset's metadata is not on disk."""


def take_options(corpus: str, adapter: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The adapter's registered defaults overlaid with the user's options; an unknown key or a
    bad common value is refused."""
    known = known_options(adapter)
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
    """Reads sample files below a corpus root; with `verify` on (the default) each payload is
    decoded once by `probe`, so a corrupt or truncated file is a SampleError naming it.
    `verify: false` copies bytes unprobed (faster, for trusted data): a bad file is then only
    caught when `embed` decodes it, named by its shard member, and `on_error: skip` cannot
    skip it."""

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
                raise self.error(sid, f"{modality} file {file} is unreadable "
                                      f"({error_text(e)})") from None
        return ext, data


def probe(ext: str, data: bytes) -> None:
    """Decode an image, audio, video or .npy payload once; raise if it is corrupt or truncated.

    Why decode and not just parse headers: a file cut short keeps a valid header (a JPEG's scan
    data, a WAV's samples, an MP4 whose index sits up front), and sharding is the only place
    that still knows which corpus file a payload came from; later stages can only name the
    shard member. Other extensions (text, json, ...) are copied as they are.
    """
    if not data:
        raise ValueError("empty file")
    if ext in IMAGE_EXT:
        _probe_image(data)
    elif ext in AUDIO_EXT:
        _probe_audio(ext, data)
    elif ext in VIDEO_EXT:
        _probe_video(data)
    elif ext == "npy":
        _probe_npy(data)


def _probe_image(data: bytes) -> None:
    """verify() checks a PNG's chunk CRCs; load() decodes the pixels (verify() never reads
    JPEG scan data), with truncated images refused even if a library set LOAD_TRUNCATED_IMAGES.

    A JPEG is decoded at 1/8 scale (draft): libjpeg still reads every byte of the scan data,
    so a cut or broken stream fails the same way, at about half the cost of full size.
    """
    from PIL import Image, ImageFile

    with Image.open(io.BytesIO(data)) as img:
        img.verify()
    saved, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format == "JPEG":
                img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


# WAV format tags whose block align is the size of one frame (PCM, float, A-law, mu-law,
# extensible): for these the data chunk's declared size gives the frame count
_WAV_FRAME_ALIGNED = frozenset({1, 3, 6, 7, 0xFFFE})


def wav_declared_frames(data: bytes) -> int | None:
    """Frames the RIFF header's data chunk declares, or None when it cannot tell.

    Why parse it here: libsndfile clamps a too-long data chunk to the bytes present, so a WAV
    cut mid-data reads as a shorter clip. A size of 0 or 0xFFFFFFFF (streamed writers) is
    'unknown', as is a compressed format whose blocks hold several frames.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, align = 12, 0
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if cid == b"fmt " and pos + 22 <= len(data):
            tag = int.from_bytes(data[pos + 8:pos + 10], "little")
            align = int.from_bytes(data[pos + 20:pos + 22], "little")
            if tag not in _WAV_FRAME_ALIGNED:
                return None
        elif cid == b"data":
            return size // align if align and size not in (0, 0xFFFFFFFF) else None
        pos += 8 + size + (size & 1)
    return None


def _probe_audio(ext: str, data: bytes) -> None:
    """Decode every frame (in blocks, so a long clip never sits in memory as floats) and check
    the count against the header's: a WAV or FLAC cut mid-data is 'truncated', not shorter."""
    import numpy as np

    sf = _import("soundfile", "soundfile")
    declared = wav_declared_frames(data) if ext == "wav" else None
    with sf.SoundFile(io.BytesIO(data)) as f:
        frames = f.frames
        if frames <= 0:
            raise ValueError("no audio frames")
        if declared is not None and declared > frames:
            raise ValueError(f"truncated: the header declares {declared} frames, "
                             f"{frames} present")
        buf = np.empty((min(frames, 4096), f.channels), np.float32)
        got = 0
        try:
            while n := len(f.read(out=buf)):
                got += n
        except sf.LibsndfileError as e:  # a FLAC cut mid-frame: "flac decoder lost sync."
            raise ValueError(f"truncated or corrupt: the header declares {frames} frames, "
                             f"decoding fails in frames {got}..{min(got + len(buf), frames)} "
                             f"({e})") from None
    # WAV and FLAC headers state the exact length; MP3/Ogg lengths may be estimates
    if ext in ("wav", "flac") and got < frames:
        raise ValueError(f"truncated: the header declares {frames} frames, {got} present")


def _probe_video(data: bytes) -> None:
    """Demux every packet and decode the first frame and the last GOP (through the last packet).

    Why not the header alone: an MP4 with its index up front (faststart, as streaming sites
    serve it) or an AVI whose header states its length still opens when cut; the packets the
    header promises are then missing. Truncated means fewer video packets than the declared
    frame count *and* a packet span short of that count at the stream's frame rate by more
    than a frame (both, so an AVI's empty dropped-frame chunks alone never reject a good file;
    the rate and not the stream duration, which FFmpeg re-estimates for an AVI cut short);
    Matroska/WebM declare no count, only a duration, which the streams' end is checked against.
    Decoding both ends proves the codec reads the clip without decoding all of it.
    """
    av = _import("av", "av (PyAV)")
    with av.open(io.BytesIO(data)) as c:
        if not c.streams.video:
            raise ValueError("no video stream")
        vs = c.streams.video[0]
        ctx = vs.codec_context
        count, first, gop = 0, False, []
        start, stop, end = None, None, 0.0  # video packet span (stream ticks); any stream's end
        for p in c.demux():
            if p.size == 0 and p.pts is None and p.dts is None:
                continue  # the demuxer's end-of-stream marker
            t = p.pts if p.pts is not None else p.dts
            if t is not None and p.time_base is not None:
                end = max(end, float((t + (p.duration or 0)) * p.time_base))
            if p.stream.index != vs.index:
                continue
            count += 1
            if t is not None:
                start = t if start is None else min(start, t)
                stop = max(stop if stop is not None else t, t + (p.duration or 0))
            if p.is_keyframe:
                gop = []
            gop.append(p)
            if not first and ctx.decode(p):
                first = True
                ctx.flush_buffers()
        if not count:
            raise ValueError("no video packets")
        declared, rate = vs.frames, vs.average_rate or vs.base_rate
        if declared > 0 and count < declared:
            if not rate or start is None:
                raise ValueError(f"truncated: the header declares {declared} video frames, "
                                 f"{count} present")
            want, have = float(declared / rate), float((stop - start) * vs.time_base)
            if have < want - 1.5 / float(rate):
                raise ValueError(f"truncated: the header declares {declared} video frames "
                                 f"({want:.2f} s), {count} present ({have:.2f} s)")
        whole = (c.duration or 0) / 1e6
        if declared <= 0 and "matroska" in c.format.name and whole - end > 0.5 + 0.02 * whole:
            raise ValueError(f"truncated: the header declares {whole:.2f} s, the streams end "
                             f"at {end:.2f} s")
        ctx.flush_buffers()
        frames = sum(len(ctx.decode(p)) for p in gop) + len(ctx.decode(None))
        if not first and not frames:
            raise ValueError("no decodable video frame")
        if not frames:
            raise ValueError("the last video frames do not decode")


def _probe_npy(data: bytes) -> None:
    """np.load without pickles: an object array is refused, never unpickled."""
    import numpy as np

    try:
        np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        msg = str(e)
        if "allow_pickle" in msg:
            raise ValueError("a .npy of Python objects (would need unpickling): refused; "
                             "store a numeric array") from None
        raise ValueError(f"truncated .npy: {msg}" if msg.startswith("EOF") else
                         f"invalid .npy: {msg}") from None


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
           on_error: str, split_of: Callable[[Any], str],
           id_of: Callable[[Any], str] | None = None, where: str = "corpus") -> SampleFactory:
    """An adapter's sample factory: `samples(split=None, workers=1, modalities=None)`.

    `split_of(row)` reads a row's split from the metadata alone, so asking for one split never
    reads or decodes the files of the others (VGGSound, UCF101: most of the bytes). A `build`
    taking `wanted` is told the task's `modalities`, so it reads (and verifies) only those: a
    bad image does not stop a text-audio task. With
    `id_of(row)` (the sample id, from the metadata too), a sample id listed in two splits
    (train/test overlap) stops the first call, before any file is read.
    """
    checked: list[bool] = []

    def samples(split: str | None = None, workers: int = 1,
                modalities: Iterable[str] | None = None) -> Iterator[Sample]:
        if id_of is not None and not checked:
            by_split: dict[str, list[str]] = {}
            for r in (rows() if callable(rows) else rows):
                by_split.setdefault(split_of(r), []).append(id_of(r))
            disjoint_splits(by_split, where)
            checked.append(True)
        chosen = rows() if callable(rows) else rows
        if split is not None:
            chosen = (r for r in chosen if split_of(r) == split)
        fn = build
        if modalities is not None and "wanted" in inspect.signature(build).parameters:
            fn = functools.partial(build, wanted=frozenset(modalities))
        return iterate(chosen, fn, on_error, workers)

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
