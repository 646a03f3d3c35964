"""Tiny layouts of the paper's datasets, exactly as each adapter's docstring documents them:
wav (soundfile), avi/mp4 (PyAV), PNG/JPEG (Pillow) and HDF5 (h5py) files made here."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmcl.corpora import ADAPTERS
from cmcl.corpora import paper as _paper  # noqa: F401  (registers the adapters)

av = pytest.importorskip("av")
sf = pytest.importorskip("soundfile")
h5py = pytest.importorskip("h5py")


# ---------------------------------------------------------------- tiny media files
def wav(seed: int, n: int = 800, sr: int = 8000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.random.default_rng(seed).uniform(-0.5, 0.5, n), sr, format="WAV",
             subtype="PCM_16")
    return buf.getvalue()


def image(seed: int, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 2000 if mode == "I;16" else 255, (6, 8, 3) if mode == "RGB" else (6, 8))
    img = Image.fromarray(arr.astype(np.uint16 if mode == "I;16" else np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def video(seed: int, fmt: str = "avi", audio: bool = False) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as c:
        vs = c.add_stream("mpeg4", rate=5)
        vs.width, vs.height, vs.pix_fmt = 16, 16, "yuv420p"
        a = c.add_stream("aac", rate=8000, layout="mono") if audio else None
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 40 * i + seed, np.uint8),
                                               format="rgb24")
            c.mux(vs.encode(frame))
        c.mux(vs.encode())
        if a is not None:
            pcm = np.sin(np.arange(8000, dtype=np.float32) / (5 + seed))[None] * 0.3
            for k in range(0, 8000, 1024):
                fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, k:k + 1024]),
                                                format="fltp", layout="mono")
                fr.sample_rate = 8000
                c.mux(a.encode(fr))
            c.mux(a.encode())
    return buf.getvalue()


def put(root: Path, rel: str, data: bytes | str) -> Path:
    f = root / rel
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(data) if isinstance(data, bytes) else f.write_text(data)
    return f


def rows(name: str, root: Path, **options):
    info, samples = ADAPTERS[name](name, root, **options)
    return info, {s.id: s for s in samples() if s.error is None}


# ---------------------------------------------------------------- UCF101
def make_ucf101(root: Path) -> Path:
    put(root, "ucfTrainTestlist/classInd.txt", "1 ApplyEyeMakeup\r\n2 YoYo\r\n")
    vids = {"ApplyEyeMakeup": ["g01_c01", "g08_c01"], "YoYo": ["g01_c01", "g09_c02"]}
    for k, (cls, clips) in enumerate(vids.items()):
        for j, clip in enumerate(clips):
            put(root, f"UCF-101/{cls}/v_{cls}_{clip}.avi", video(10 * k + j))
    put(root, "ucfTrainTestlist/trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nYoYo/v_YoYo_g09_c02.avi 2\r\n")
    put(root, "ucfTrainTestlist/testlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\nYoYo/v_YoYo_g01_c01.avi\r\n")
    put(root, "ucfTrainTestlist/trainlist02.txt", "YoYo/v_YoYo_g01_c01.avi 2\n")
    put(root, "ucfTrainTestlist/testlist02.txt", "YoYo/v_YoYo_g09_c02.avi\n")
    return root


# ---------------------------------------------------------------- ESC-50
def make_esc50(root: Path) -> Path:
    lines = ["filename,fold,target,category,esc10,src_file,take"]
    for i, (target, cat) in enumerate([(0, "dog"), (1, "crying_baby"), (2, "rain")] * 2):
        fold = 5 if i >= 3 else 1 + i
        fn = f"{fold}-{1000 + i}-A-{target}.wav"
        put(root, f"audio/{fn}", wav(i))
        lines.append(f"{fn},{fold},{target},{cat},False,{1000 + i},A")
    put(root, "meta/esc50.csv", "\n".join(lines) + "\n")
    return root


# ---------------------------------------------------------------- NYUDv2
def make_nyudv2(root: Path) -> Path:
    for i, split in enumerate(["train", "train", "test"]):
        put(root, f"{split}/rgb/{i:04d}.png", image(i))
        put(root, f"{split}/depth/{i:04d}.png", image(i, mode="I;16"))
    return root


# ---------------------------------------------------------------- Clotho
def make_clotho(root: Path, audio_dir: str = "clotho_audio_{}") -> Path:
    for part, files in (("development", ["rain on roof.wav", "birds.wav"]),
                        ("evaluation", ["street, night.wav"])):
        table = [["file_name"] + [f"caption_{k}" for k in range(1, 6)]]
        for i, fn in enumerate(files):
            put(root, f"{audio_dir.format(part)}/{fn}", wav(i + len(part)))
            table.append([fn] + [f"{Path(fn).stem} caption {k}" for k in range(1, 6)])
        buf = io.StringIO()
        csv.writer(buf).writerows(table)
        put(root, f"clotho_captions_{part}.csv", buf.getvalue())
    return root


# ---------------------------------------------------------------- VGGSound
def make_vggsound(root: Path) -> Path:
    table = []
    for i, (label, split) in enumerate([("dog barking", "train"), ("dog barking", "train"),
                                        ("dog barking", "test"), ("playing piano", "train"),
                                        ("playing piano", "test"), ("rain", "train")]):
        ytid = f"yt_{i}-x"
        put(root, f"video/{ytid}_{10 * i:06d}.mp4", video(i, "mp4", audio=True))
        table.append([ytid, str(10 * i), label, split])
    buf = io.StringIO()
    csv.writer(buf).writerows(table)
    put(root, "vggsound.csv", buf.getvalue())
    return root


def make_h5(path: Path, ids, n_rows: int, d: int = 8, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {sid: rng.normal(size=(n_rows, d)).astype(np.float32) for sid in ids}
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for sid, x in arrays.items():
            f.create_dataset(sid, data=x)
    return arrays


def make_classes(path: Path, names, d: int = 8) -> dict:
    table = {c: np.full(d, i + 1, np.float32) for i, c in enumerate(names)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for c, x in table.items():
            f.create_dataset(c, data=x)
    return table
