"""Reading shard payloads for encoders, with errors that say what the bytes actually are.

Why: a payload of the wrong kind (a WAV fed to `mfcc_stats`, an MP3 fed to `pixels`) used to
fail deep inside a decoder with a message about the decoder (`np.load`'s "pickled data"),
not about the mix-up. Every reader here sniffs the magic bytes first and names the encoder,
the shard member (`where`: `<shard>.tar:<sample key>.<modality>.<ext>`), what the encoder
expects, what the file is, and which built-in encoder reads that kind.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator

import numpy as np

from cmcl.corpora.media import error_text

# (label, category) by magic bytes; categories pick the hint: audio/image/video/array/text
SUGGEST = {"audio": "logmel", "image": "pixels", "array": "mfcc_stats` or `precomputed",
           "text": "minilm"}


def sniff(data: bytes) -> tuple[str, str] | None:
    """(label, category) of a payload by its magic bytes; None when no known signature matches."""
    head = bytes(data[:16])
    riff = head[8:12] if head[:4] == b"RIFF" else b""
    if riff == b"WAVE":
        return "WAV", "audio"
    if riff == b"WEBP":
        return "WebP", "image"
    if riff == b"AVI ":
        return "AVI", "video"
    if head[:4] == b"fLaC":
        return "FLAC", "audio"
    if head[:4] == b"OggS":
        return "Ogg", "audio"
    if head[:4] in (b"FORM",) and head[8:12] in (b"AIFF", b"AIFC"):
        return "AIFF", "audio"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG", "image"
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG", "image"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF", "image"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF", "image"
    if head[:2] == b"BM" and len(head) >= 10 and head[6:10] == b"\0\0\0\0":
        return "BMP", "image"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE6 == 0xE2):
        return "MP3", "audio"
    if head[4:8] == b"ftyp":
        return ("M4A", "audio") if head[8:12] in (b"M4A ", b"M4B ") else ("MP4/MOV", "video")
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "Matroska/WebM", "video"
    if head[:6] == b"\x93NUMPY":
        return ".npy array", "array"
    if head[:4] == b"PK\x03\x04":
        return "zip (or .npz)", "other"
    if head[:4] == b"\x89HDF":
        return "HDF5", "other"
    if head[:4] == b"%PDF":
        return "PDF", "other"
    if head[:2] == b"\x80\x04" or head[:2] == b"\x80\x05":
        return "Python pickle", "other"
    try:
        text = bytes(data[:4096]).decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < 4090:  # a multi-byte character cut by the 4096-byte window is still text
            return None
        text = bytes(data[:e.start]).decode("utf-8")
    if text and "\0" not in text:
        return "text", "text"
    return None


def wrong_kind(where: str, spec: str, expects: str, data: bytes, category: str) -> str | None:
    """The error for a payload of another kind than `category`, or None if it may be one."""
    kind = sniff(data)
    if kind is None or kind[1] == category:
        return None
    label, cat = kind
    hint = f": use `{SUGGEST[cat]}`" if cat in SUGGEST and SUGGEST[cat] != spec else ""
    what = "a text file" if cat == "text" else f"a {label} file"
    return f"{where}: encoder '{spec}' expects {expects}; this is {what}{hint}"


def read_text(data: bytes | str, where: str, spec: str) -> str:
    """UTF-8 text of a text payload; a binary file (image, audio, ...) is named as such."""
    if isinstance(data, str):
        return data
    expects = "UTF-8 text"
    if msg := wrong_kind(where, spec, expects, data, "text"):
        raise ValueError(msg)
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: encoder '{spec}' expects {expects}; this file is not UTF-8 "
                         f"(byte 0x{data[e.start]:02x} at offset {e.start})") from None


IMAGE_EXPECTS = "an image file (PNG, JPEG, BMP, GIF, TIFF, WebP)"


def read_image(data: bytes, where: str, spec: str, mode: str):
    """A decoded PIL image in `mode`; other kinds of files and corrupt images are named."""
    from PIL import Image, UnidentifiedImageError

    if msg := wrong_kind(where, spec, IMAGE_EXPECTS, data, "image"):
        raise ValueError(msg)
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"{where}: unreadable image ({error_text(e)}); encoder '{spec}' expects "
                         f"{IMAGE_EXPECTS}") from None


AUDIO_EXPECTS = "an audio file (WAV, FLAC, Ogg, AIFF, MP3)"


def read_audio(data: bytes, where: str, spec: str, rate: int) -> np.ndarray:
    """Mono float32 samples at `rate` Hz: channels averaged, other rates resampled.

    Resampling is scipy's polyphase FIR (`resample_poly`, Kaiser window, up/down reduced by
    their gcd): band-limited, deterministic, and exact for the common 44.1/48/22.05 kHz.
    """
    import soundfile as sf

    if msg := wrong_kind(where, spec, AUDIO_EXPECTS, data, "audio"):
        raise ValueError(msg)
    try:
        x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, TypeError
        why = re.sub(r"Error opening <_io\.BytesIO object at 0x[0-9a-f]+>: ", "", str(e))
        raise ValueError(f"{where}: unreadable audio ({why}); encoder '{spec}' expects "
                         f"{AUDIO_EXPECTS}") from None
    if len(x) == 0:
        raise ValueError(f"{where}: encoder '{spec}': the audio file has no frames")
    return resample(x.mean(axis=1), int(sr), rate)


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling of a 1-d signal (see read_audio); a no-op at the same rate."""
    if rate_in == rate_out:
        return np.ascontiguousarray(x, dtype=np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(rate_in, rate_out)
    return resample_poly(x.astype(np.float32), rate_out // g, rate_in // g).astype(np.float32)


VIDEO_EXPECTS = "a video file (MP4, AVI, Matroska/WebM, MOV)"


def read_video_frames(data: bytes, where: str, spec: str, n: int) -> list:
    """`n` RGB frames (PIL images) spread evenly over the clip's whole length.

    The clip is demuxed once to count its video packets (no decoding), then decoded once
    keeping only the chosen frames, so a long clip never sits in memory; a clip with fewer
    than `n` frames repeats frames (the sampling is still uniform over time).
    """
    import av

    if msg := wrong_kind(where, spec, VIDEO_EXPECTS, data, "video"):
        raise ValueError(msg)
    try:
        with av.open(io.BytesIO(data)) as c:
            if not c.streams.video:
                raise ValueError("no video stream")
            count = sum(1 for p in c.demux(c.streams.video[0]) if p.size)
        with av.open(io.BytesIO(data)) as c:
            frames = list(_pick(c.decode(c.streams.video[0]), _indices(count, n)))
    except Exception as e:  # PyAV raises its own error types
        raise ValueError(f"{where}: unreadable video ({e}); encoder '{spec}' expects "
                         f"{VIDEO_EXPECTS}") from None
    if not frames:
        raise ValueError(f"{where}: encoder '{spec}': the video has no decodable frame")
    return (frames + [frames[-1]] * n)[:n]  # decoded fewer frames than packets: hold the last


def _indices(count: int, n: int) -> list[int]:
    """Centres of n equal segments of [0, count): uniform in time, also when count < n."""
    return [min(count - 1, int((i + 0.5) * count / n)) for i in range(n)] if count else []


def _pick(frames: Iterator, wanted: list[int]) -> Iterator:
    """The decoded frames at the (sorted, possibly repeated) indices `wanted`, as RGB images."""
    k = 0
    for i, frame in enumerate(frames):
        if k >= len(wanted):
            return
        if i == wanted[k]:
            img = frame.to_image()
            while k < len(wanted) and wanted[k] == i:
                yield img
                k += 1
