"""Truncated and corrupt media through the real adapters, sharding and embedding.

Files are made here (Pillow, soundfile, PyAV, numpy), then cut short or replaced by junk. By
default the job stops with an error naming the corpus, the sample and the file; with
`on_error: skip` the sample is left out and listed in the split's rejected.jsonl with the
reason. Sharding decodes every payload once (`cmcl.corpora.media.probe`), so a file cut short
behind a valid header (WAV/FLAC samples, JPEG scan data, an MP4 with its index up front, an
AVI) is caught there, named by the corpus file; only with `verify: false` does a bad file
reach `embed`, which names the shard member instead.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmcl.shards import iter_samples, shard_task

av = pytest.importorskip("av")
sf = pytest.importorskip("soundfile")


# ---------------------------------------------------------------- media made here
def wav(seed: int, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.random.default_rng(seed).uniform(-0.5, 0.5, 4000), 8000, format=fmt)
    return buf.getvalue()


def picture(seed: int, fmt: str, size: int = 16) -> bytes:
    buf = io.BytesIO()
    rgb = np.random.default_rng(seed).integers(0, 255, (size, size, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


def mp4(seed: int, path: Path | None = None) -> bytes:
    """A 2-second clip with an AAC track; `path` writes it there with the index up front
    (faststart), as streaming sites serve it."""
    target = path if path is not None else io.BytesIO()
    opts = {"movflags": "faststart"} if path is not None else {}
    with av.open(target, mode="w", format="mp4", options=opts) as c:
        vs = c.add_stream("mpeg4", rate=5)
        vs.width, vs.height, vs.pix_fmt = 16, 16, "yuv420p"
        a = c.add_stream("aac", rate=8000, layout="mono")
        for i in range(10):
            img = np.full((16, 16, 3), 20 * i + seed, np.uint8)
            c.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(vs.encode())
        pcm = (np.sin(np.arange(16000, dtype=np.float32) / (5 + seed)) * 0.3)[None]
        for k in range(0, 16000, 1024):
            fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, k:k + 1024]),
                                            format="fltp", layout="mono")
            fr.sample_rate = 8000
            c.mux(a.encode(fr))
        c.mux(a.encode())
    return path.read_bytes() if path is not None else target.getvalue()


def avi(seed: int) -> bytes:
    """An AVI as UCF101 ships them (MPEG-4 part 2): its header states the frame count, its
    index sits at the end."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="avi") as c:
        vs = c.add_stream("mpeg4", rate=25)
        vs.width, vs.height, vs.pix_fmt = 64, 64, "yuv420p"
        rng = np.random.default_rng(seed)  # noise: frames large next to the AVI header
        for _ in range(25):
            img = rng.integers(0, 255, (64, 64, 3)).astype(np.uint8)
            c.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(vs.encode())
    return buf.getvalue()


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def put(root: Path, rel: str, data: bytes | str) -> Path:
    f = root / rel
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(data) if isinstance(data, bytes) else f.write_text(data)
    return f


def rejected(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "rejected.jsonl").read_text().splitlines()]


def check_skip(task: dict, corpus: dict, split: str, out: Path, sid: str, file: str,
               kept: int) -> None:
    """`on_error: skip`: the rest is sharded, the bad sample listed with a reason naming it."""
    opts = {**corpus.get("options", {}), "on_error": "skip"}
    assert shard_task(task, {**corpus, "options": opts}, split, out) == kept
    rows = rejected(out)
    assert [(r["corpus"], r["id"]) for r in rows] == [(task["corpus"], sid)]
    assert f"sample '{sid}'" in rows[0]["reason"] and file in rows[0]["reason"]
    assert json.loads((out / "meta.json").read_text())["rejected"] == 1


# ---------------------------------------------------------------- ESC-50: audio
def make_esc50(root: Path, ext: str = "wav") -> Path:
    lines = ["filename,fold,target,category,esc10,src_file,take"]
    for i, (target, cat) in enumerate([(0, "dog"), (1, "rain")] * 3):
        fn = f"{1 + i % 4}-{100 + i}-A-{target}.{ext}"
        put(root, f"audio/{fn}", wav(i, ext.upper()))
        lines.append(f"{fn},{1 + i % 4},{target},{cat},False,{100 + i},A")
    put(root, "meta/esc50.csv", "\n".join(lines) + "\n")
    return root


ESC_TASK = {"name": "ta", "corpus": "esc50", "modalities": ["text", "audio"]}


@pytest.mark.parametrize("ext, damage, error", [
    ("wav", lambda b: b[:20], ""),  # cut inside the header
    ("wav", lambda b: b"RIFF" + bytes(64), ""),  # a RIFF tag and nothing else
    ("flac", lambda b: b"fLaC" + bytes(range(200)), ""),  # junk after the FLAC magic
    # cut mid-data: the header survives, so only decoding (or WAV's data-chunk size) shows it
    ("wav", half, r" \(truncated: the header declares 4000 frames, 1989 present"),
    ("flac", half, r" \(truncated or corrupt: the header declares 4000 frames, decoding fails"),
])
def test_esc50_corrupt_audio_is_named_or_skipped(tmp_path, ext, damage, error):
    root = make_esc50(tmp_path / "esc", ext)
    bad = root / f"audio/2-101-A-1.{ext}"
    bad.write_bytes(damage(bad.read_bytes()))
    corpus = {"path": str(root), "adapter": "esc50"}
    with pytest.raises(ValueError, match=rf"corpus 'esc50': sample '2-101-A-1': audio file "
                                         rf".*2-101-A-1\.{ext} is unreadable{error}"):
        shard_task(ESC_TASK, corpus, "train", tmp_path / "s")
    assert not (tmp_path / "s").exists()
    check_skip(ESC_TASK, corpus, "train", tmp_path / "k", "2-101-A-1", bad.name, kept=5)


# ---------------------------------------------------------------- VGGSound and UCF101: video
def make_vggsound(root: Path) -> Path:
    rows = []
    for i, label in enumerate(["dog barking", "rain"] * 2):
        rows.append(f"yt{i},{10 * i},{label},{'test' if i >= 2 else 'train'}")
        put(root, f"video/yt{i}_{10 * i:06d}.mp4", mp4(i))
    put(root, "vggsound.csv", "\n".join(rows) + "\n")
    return root


VGG_TASK = {"name": "av", "corpus": "vgg", "modalities": ["audio", "video"]}


@pytest.mark.parametrize("damage, error", [
    (half, "video file .* is unreadable"),  # index at the end: cut off
    (lambda b: b"\x00\x00\x00\x18ftypmp42" + b"junk" * 50, "video file .* is unreadable"),
    # index up front and intact, packets cut: the probe counts the packets the index lists
    ("faststart", r"video file .* is unreadable \(truncated: the header declares 10 video "
                  r"frames \(2\.00 s\), 4 present"),
])
def test_vggsound_corrupt_mp4_is_named_or_skipped(tmp_path, damage, error):
    root = make_vggsound(tmp_path / "vgg")
    bad = root / "video/yt1_000010.mp4"
    if damage == "faststart":
        bad.write_bytes(half(mp4(1, tmp_path / "fast.mp4")))
    else:
        bad.write_bytes(damage(bad.read_bytes()))
    corpus = {"path": str(root), "adapter": "vggsound"}
    with pytest.raises(ValueError, match=rf"corpus 'vgg': sample 'yt1_000010': {error}"):
        shard_task(VGG_TASK, corpus, "train", tmp_path / "s")
    assert not (tmp_path / "s").exists()
    check_skip(VGG_TASK, corpus, "train", tmp_path / "k", "yt1_000010", bad.name, kept=1)


@pytest.mark.parametrize("ext, make, error", [
    ("mp4", lambda g, tmp: half(mp4(g)), r"\(\[Errno \d+\] Invalid data"),  # index cut off
    ("mp4", lambda g, tmp: half(mp4(g, tmp / "fast.mp4")),  # index up front, packets cut
     r"\(truncated: the header declares 10 video frames \(2\.00 s\), 4 present"),
    ("avi", lambda g, tmp: half(avi(g)),  # the header's frame count survives, the index not
     r"\(truncated: the header declares 25 video frames \(1\.00 s\), \d+ present"),
])
def test_ucf101_truncated_video_is_named(tmp_path, ext, make, error):
    """A video-only adapter: no audio decode to trip over, so the video probe must see it."""
    root = tmp_path / "ucf"
    put(root, "ucfTrainTestlist/classInd.txt", "1 YoYo\n")
    put(root, "ucfTrainTestlist/trainlist01.txt",
        f"YoYo/v_YoYo_g01_c01.{ext} 1\nYoYo/v_YoYo_g02_c01.{ext} 1\n")
    put(root, "ucfTrainTestlist/testlist01.txt", f"YoYo/v_YoYo_g03_c01.{ext}\n")
    for g in (1, 2, 3):
        put(root, f"UCF-101/YoYo/v_YoYo_g0{g}_c01.{ext}", mp4(g) if ext == "mp4" else avi(g))
    bad = root / f"UCF-101/YoYo/v_YoYo_g02_c01.{ext}"
    bad.write_bytes(make(2, tmp_path))
    task = {"name": "tv", "corpus": "ucf", "modalities": ["text", "video"]}
    corpus = {"path": str(root), "adapter": "ucf101"}
    with pytest.raises(ValueError, match=rf"corpus 'ucf': sample 'v_YoYo_g02_c01': video file "
                                         rf".*v_YoYo_g02_c01\.{ext} is unreadable {error}"):
        shard_task(task, corpus, "train", tmp_path / "s")
    assert not (tmp_path / "s").exists()
    check_skip(task, corpus, "train", tmp_path / "k", "v_YoYo_g02_c01", bad.name, kept=1)


# ---------------------------------------------------------------- LLVIP and NYUDv2: images
def make_llvip(root: Path) -> Path:
    for split, ids in (("train", ["010001", "010002", "010003"]), ("test", ["190001"])):
        for k, sid in enumerate(ids):
            put(root, f"visible/{split}/{sid}.jpg", picture(k, "JPEG"))
            put(root, f"infrared/{split}/{sid}.jpg", picture(10 + k, "JPEG"))
    return root


LLVIP_TASK = {"name": "it", "corpus": "llvip", "modalities": ["image", "thermal"]}


def test_llvip_corrupt_jpeg_is_named_or_skipped(tmp_path):
    root = make_llvip(tmp_path / "llvip")
    bad = root / "infrared/train/010002.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"junk" * 30)
    corpus = {"path": str(root), "adapter": "llvip"}
    with pytest.raises(ValueError, match=r"corpus 'llvip': sample '010002': thermal file "
                                         r".*infrared/train/010002\.jpg is unreadable"):
        shard_task(LLVIP_TASK, corpus, "train", tmp_path / "s")
    check_skip(LLVIP_TASK, corpus, "train", tmp_path / "k", "010002", "010002.jpg", kept=2)


def test_llvip_truncated_jpeg_is_refused(tmp_path):
    """Headers intact, scan data cut: PIL's verify() passes it, only decoding the pixels fails."""
    root = make_llvip(tmp_path / "llvip")
    bad = root / "visible/train/010002.jpg"
    bad.write_bytes(half(picture(0, "JPEG", size=96)))
    corpus = {"path": str(root), "adapter": "llvip"}
    with pytest.raises(ValueError, match=r"corpus 'llvip': sample '010002': image file "
                                         r".*visible/train/010002\.jpg is unreadable "
                                         r"\(image file is truncated"):
        shard_task(LLVIP_TASK, corpus, "train", tmp_path / "s")
    check_skip(LLVIP_TASK, corpus, "train", tmp_path / "k", "010002", "010002.jpg", kept=2)


def test_nyudv2_truncated_png_is_named(tmp_path):
    root = tmp_path / "nyu"
    for split, ids in (("train", ["0001", "0002"]), ("test", ["0003"])):
        for k, sid in enumerate(ids):
            put(root, f"{split}/rgb/{sid}.png", picture(k, "PNG"))
            depth = np.random.default_rng(k).integers(0, 5000, (16, 16)).astype(np.uint16)
            buf = io.BytesIO()
            Image.fromarray(depth).save(buf, format="PNG")
            put(root, f"{split}/depth/{sid}.png", buf.getvalue())
    bad = root / "train/rgb/0002.png"
    bad.write_bytes(half(bad.read_bytes()))
    task = {"name": "id", "corpus": "nyu", "modalities": ["image", "depth"]}
    corpus = {"path": str(root), "adapter": "nyudv2"}
    with pytest.raises(ValueError, match=r"corpus 'nyu': sample '0002': image file "
                                         r".*train/rgb/0002\.png is unreadable"):
        shard_task(task, corpus, "train", tmp_path / "s")
    check_skip(task, corpus, "train", tmp_path / "k", "0002", "0002.png", kept=1)


# ---------------------------------------------------------------- generic layout: PNG, npy
GENERIC_TASK = {"name": "ia", "corpus": "c", "modalities": ["image", "audio"],
                "pairing": "class"}
ENCODERS = {"image": "pixels", "audio": "mfcc_stats"}


def _cut_npy(f: Path) -> None:
    f.write_bytes(f.read_bytes()[:-7])  # a valid header, the data short by 7 bytes


def _junk_png(f: Path) -> None:
    f.write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 20)


def _cut_png(f: Path) -> None:
    f.write_bytes(half(f.read_bytes()))


def _pickled_npy(f: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    f.write_bytes(buf.getvalue())


# (file, damage, sample, what sharding says about the file, what embed says about the member)
GENERIC_CASES = [
    ("img/1_3.png", _cut_png, "i13", r"image file .*img/1_3\.png is unreadable \(Truncated",
     r"\.image\.png: unreadable image"),
    ("img/1_3.png", _junk_png, "i13", r"image file .*img/1_3\.png is unreadable",
     r"\.image\.png: unreadable image"),
    ("aud/1_3.npy", _cut_npy, "a13", r"audio file .*aud/1_3\.npy is unreadable \(truncated "
     r"\.npy: EOF: reading array data, expected \d+ bytes got \d+", r"\.audio\.npy: not a "
     r"readable \.npy"),
    ("aud/1_3.npy", _pickled_npy, "a13", r"audio file .*aud/1_3\.npy is unreadable \(a \.npy "
     r"of Python objects \(would need unpickling\): refused", r"\.audio\.npy: not a "
     r"readable \.npy"),
]


@pytest.mark.parametrize("rel, damage, sid, error, _", GENERIC_CASES)
def test_generic_corrupt_file_is_named_at_sharding(corpus, tmp_path, rel, damage, sid, error, _):
    """The generic adapter decodes each file once while sharding (`verify` defaults to true):
    the error names corpus, sample and file, and no shard folder appears."""
    damage(corpus / rel)
    with pytest.raises(ValueError, match=rf"corpus 'c': sample '{sid}': {error}"):
        shard_task(GENERIC_TASK, {"path": str(corpus)}, "train", tmp_path / "s")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("rel, damage, sid, error, _", GENERIC_CASES)
def test_generic_corrupt_file_is_skipped_on_request(corpus, tmp_path, rel, damage, sid, error,
                                                    _):
    damage(corpus / rel)
    out = tmp_path / "s"
    shard_task(GENERIC_TASK, {"path": str(corpus), "options": {"on_error": "skip"}}, "train",
               out)
    paired = [json.loads(x["json"])["id"] for x in iter_samples(out)]
    assert paired and not any(sid in pair.split("+") for pair in paired)
    rows = rejected(out)
    assert [(r["corpus"], r["id"]) for r in rows] == [("c", sid)]
    assert rows[0]["reason"].startswith(f"corpus 'c': sample '{sid}': ")
    assert rel in rows[0]["reason"]


@pytest.mark.parametrize("rel, damage, sid, _, error", GENERIC_CASES)
def test_generic_unverified_corrupt_file_stops_embedding(corpus, tmp_path, rel, damage, sid, _,
                                                         error):
    """`verify: false` copies the bytes unread (trusted data, faster sharding): the encoder
    that decodes them names the shard member (which carries the sample id), no feature folder
    appears, and a pickle-bearing .npy is refused there too, never unpickled."""
    from cmcl.embed import embed_split

    damage(corpus / rel)
    shard_task(GENERIC_TASK, {"path": str(corpus), "options": {"verify": False}}, "train",
               tmp_path / "s")
    with pytest.raises(ValueError, match=rf"\.tar:[^ ]*{sid}[^ ]*{error}"):
        embed_split(tmp_path / "s", tmp_path / "f", ENCODERS)
    assert not (tmp_path / "f").exists()


def test_corrupt_npy_names_the_sample(corpus, tmp_path):
    """Sharding loads each .npy once and names the corpus file; unverified (`verify: false`)
    it reaches `embed`, which names the shard member."""
    from cmcl.embed import embed_split

    (corpus / "aud/1_3.npy").write_bytes(b"\x93NUMPY garbage")
    task = {"name": "ia", "corpus": "c", "modalities": ["image", "audio"], "pairing": "class"}
    with pytest.raises(ValueError, match=r"corpus 'c': sample 'a13': audio file .*aud/1_3\.npy "
                                         r"is unreadable \(invalid \.npy: "):
        shard_task(task, {"path": str(corpus)}, "train", tmp_path / "s")
    assert not (tmp_path / "s").exists()
    shard_task(task, {"path": str(corpus), "options": {"verify": False}}, "train", tmp_path / "s")
    with pytest.raises(ValueError, match=r"\+a13\.audio\.npy: not a readable \.npy"):
        embed_split(tmp_path / "s", tmp_path / "f", {"image": "pixels", "audio": "mfcc_stats"})
    assert not (tmp_path / "f").exists()
