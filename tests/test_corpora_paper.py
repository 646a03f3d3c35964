"""The paper's dataset adapters, the HDF5 feature import and the paper params files.

Every fixture builds a tiny layout exactly as the adapter's docstring documents it: tiny wav
(soundfile), avi/mp4 (PyAV), PNG/JPEG (Pillow) and HDF5 (h5py) files made here, no downloads.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmcl.corpora import ADAPTERS, open_corpus
from cmcl.corpora import paper as _paper  # noqa: F401  (registers the adapters)
from cmcl.corpora.features_h5 import import_features, import_task
from cmcl.shards import iter_samples, read_features, shard_task

av = pytest.importorskip("av")
sf = pytest.importorskip("soundfile")
h5py = pytest.importorskip("h5py")
ROOT = Path(__file__).resolve().parents[1]


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


def test_ucf101_official_split_lists(tmp_path):
    root = make_ucf101(tmp_path / "ucf")
    info, got = rows("ucf101", root)
    assert info.classes == ["apply eye makeup", "yo yo"] and "{}" in info.templates
    assert {k: (s.split, s.label) for k, s in got.items()} == {
        "v_ApplyEyeMakeup_g08_c01": ("train", 0), "v_YoYo_g09_c02": ("train", 1),
        "v_ApplyEyeMakeup_g01_c01": ("test", 0), "v_YoYo_g01_c01": ("test", 1)}
    s = got["v_YoYo_g09_c02"]
    assert s.data["video"] == ("avi", (root / "UCF-101/YoYo/v_YoYo_g09_c02.avi").read_bytes())
    assert s.data["text"] == ("txt", "yo yo")
    _, got2 = rows("ucf101", root, split=2)
    assert {k: s.split for k, s in got2.items()} == {"v_YoYo_g01_c01": "train",
                                                      "v_YoYo_g09_c02": "test"}
    with pytest.raises(ValueError, match="split must be 1, 2 or 3"):
        rows("ucf101", root, split=4)
    with pytest.raises(ValueError, match=r"corpus 'ucf101': unknown option\(s\) \['fold'\]"):
        rows("ucf101", root, fold=1)


def test_ucf101_bad_samples_name_corpus_sample_and_file(tmp_path):
    root = make_ucf101(tmp_path / "ucf")
    (root / "UCF-101/YoYo/v_YoYo_g09_c02.avi").unlink()
    with pytest.raises(FileNotFoundError, match=r"corpus 'ucf101': sample 'v_YoYo_g09_c02': "
                                                r"video file .*v_YoYo_g09_c02\.avi does not exist"):
        rows("ucf101", root)
    _, got = rows("ucf101", root, on_error="skip")
    assert len(got) == 3
    skipped = [s for s in ADAPTERS["ucf101"]("ucf101", root, on_error="skip")[1]() if s.error]
    assert len(skipped) == 1 and "v_YoYo_g09_c02.avi does not exist" in skipped[0].error
    put(root, "UCF-101/YoYo/v_YoYo_g09_c02.avi", b"not a video at all")
    with pytest.raises(ValueError, match=r"sample 'v_YoYo_g09_c02': video file .* unreadable"):
        rows("ucf101", root)
    assert len(rows("ucf101", root, verify=False)[1]) == 4
    put(root, "ucfTrainTestlist/testlist01.txt", "Juggling/v_Juggling_g01_c01.avi\n")
    with pytest.raises(ValueError, match=r"sample 'v_Juggling_g01_c01': label 'Juggling' .*"
                                         r"not in the class list .*classInd\.txt"):
        rows("ucf101", root, verify=False)


def test_ucf101_shards_through_the_pipeline(tmp_path):
    root = make_ucf101(tmp_path / "ucf")
    task = {"name": "tv", "corpus": "ucf101", "modalities": ["text", "video"]}
    assert shard_task(task, {"path": str(root), "adapter": "ucf101"}, "test", tmp_path / "s") == 2
    got = {json.loads(s["json"])["id"]: s for s in iter_samples(tmp_path / "s")}
    assert got["v_YoYo_g01_c01"]["video.avi"] == \
        (root / "UCF-101/YoYo/v_YoYo_g01_c01.avi").read_bytes()
    meta = json.loads((tmp_path / "s/meta.json").read_text())
    assert meta["classes"] == ["apply eye makeup", "yo yo"]


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


def test_esc50_folds_and_classes(tmp_path):
    root = make_esc50(tmp_path / "esc")
    info, got = rows("esc50", root)
    assert info.classes == ["dog", "crying baby", "rain"]
    assert sorted(k for k, s in got.items() if s.split == "test") == \
        ["5-1003-A-0", "5-1004-A-1", "5-1005-A-2"]
    s = got["2-1001-A-1"]
    assert (s.split, s.label, s.data["text"]) == ("train", 1, ("txt", "crying baby"))
    assert s.data["audio"] == ("wav", (root / "audio/2-1001-A-1.wav").read_bytes())
    _, got1 = rows("esc50", root, test_fold=1)
    assert [k for k, s in got1.items() if s.split == "test"] == ["1-1000-A-0"]


def test_esc50_unreadable_audio_is_named(tmp_path):
    root = make_esc50(tmp_path / "esc")
    put(root, "audio/3-1002-A-2.wav", b"RIFF....WAVEjunk")
    with pytest.raises(ValueError, match=r"corpus 'esc50': sample '3-1002-A-2': audio file "
                                         r".*3-1002-A-2\.wav is unreadable"):
        rows("esc50", root)


# ---------------------------------------------------------------- NYUDv2
def make_nyudv2(root: Path) -> Path:
    for i, split in enumerate(["train", "train", "test"]):
        put(root, f"{split}/rgb/{i:04d}.png", image(i))
        put(root, f"{split}/depth/{i:04d}.png", image(i, mode="I;16"))
    return root


def test_nyudv2_rgb_depth_pairs(tmp_path):
    root = make_nyudv2(tmp_path / "nyu")
    info, got = rows("nyudv2", root)
    assert set(info.modalities) == {"image", "depth"} and info.classes is None
    assert {k: s.split for k, s in got.items()} == {"0000": "train", "0001": "train",
                                                     "0002": "test"}
    assert got["0002"].data["depth"] == ("png", (root / "test/depth/0002.png").read_bytes())
    assert got["0002"].data["image"] == ("png", (root / "test/rgb/0002.png").read_bytes())
    depth = Image.open(io.BytesIO(got["0000"].data["depth"][1]))
    assert depth.mode.startswith("I") and np.asarray(depth).max() > 255


def test_nyudv2_missing_or_8bit_depth(tmp_path):
    root = make_nyudv2(tmp_path / "nyu")
    put(root, "train/depth/0001.png", image(1, mode="L"))
    with pytest.raises(ValueError, match=r"sample '0001': depth file .*0001\.png is not a 16-bit"):
        rows("nyudv2", root)
    (root / "train/depth/0001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"corpus 'nyudv2': sample '0001': depth file"):
        rows("nyudv2", root)


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


def test_clotho_captions_per_clip_or_all(tmp_path):
    root = make_clotho(tmp_path / "clotho")
    info, got = rows("clotho", root)
    assert info.classes is None and set(got) == {"rain on roof", "birds", "street, night"}
    s = got["street, night"]
    assert (s.split, s.label, s.data["text"]) == ("test", None, ("txt", "street, night caption 1"))
    assert s.data["audio"][1] == (root / "clotho_audio_evaluation/street, night.wav").read_bytes()
    _, got3 = rows("clotho", root, caption=3)
    assert got3["birds"].data["text"][1] == "birds caption 3"
    _, every = rows("clotho", root, caption="all")
    assert len(every) == 15 and every["birds#5"].data["text"][1] == "birds caption 5"
    alt = make_clotho(tmp_path / "clotho2", audio_dir="{}")  # as the 7z archives unpack
    assert len(rows("clotho", alt)[1]) == 3


def test_clotho_missing_audio(tmp_path):
    root = make_clotho(tmp_path / "clotho")
    (root / "clotho_audio_development/birds.wav").unlink()
    with pytest.raises(FileNotFoundError, match=r"sample 'birds': audio file .*birds\.wav"):
        rows("clotho", root)


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


def test_vggsound_video_audio_text(tmp_path):
    root = make_vggsound(tmp_path / "vgg")
    info, got = rows("vggsound", root)
    assert info.classes == ["dog barking", "playing piano", "rain"]
    s = got["yt_4-x_000040"]
    assert (s.split, s.label, s.data["text"]) == ("test", 1, ("txt", "playing piano"))
    assert s.data["video"] == ("mp4", (root / "video/yt_4-x_000040.mp4").read_bytes())
    pcm, sr = sf.read(io.BytesIO(s.data["audio"][1]))
    assert s.data["audio"][0] == "wav" and sr == 16000 and pcm.ndim == 1
    assert 0.8 < len(pcm) / sr < 1.3 and np.abs(pcm).max() > 0.1
    _, native = rows("vggsound", root, audio_rate=None, audio_channels=None)
    assert sf.info(io.BytesIO(native["yt_4-x_000040"].data["audio"][1])).samplerate == 8000


def test_vggsound_sharding_in_workers_reads_one_split_and_keeps_the_bytes(tmp_path):
    root = make_vggsound(tmp_path / "vgg")
    (root / "video/yt_0-x_000000.mp4").write_bytes(b"not a video")  # a train clip
    task = {"name": "va", "corpus": "vgg", "modalities": ["video", "audio"]}
    corp = {"path": str(root), "adapter": "vggsound"}
    for w in (1, 2):  # the test split never decodes the broken train clip
        assert shard_task(task, corp, "test", tmp_path / f"w{w}", workers=w) == 2
    for f in sorted((tmp_path / "w1").iterdir()):
        assert f.read_bytes() == (tmp_path / "w2" / f.name).read_bytes(), f.name
    with pytest.raises(ValueError, match=r"sample 'yt_0-x_000000': video file .* unreadable"):
        shard_task(task, corp, "train", tmp_path / "t", workers=2)
    skip = {**corp, "options": {"on_error": "skip"}}
    assert shard_task(task, skip, "train", tmp_path / "t", workers=2) == 3
    rejected = (tmp_path / "t/rejected.jsonl").read_text().splitlines()
    assert [json.loads(r)["id"] for r in rejected] == ["yt_0-x_000000"]


def test_vggsound_s_subset_is_seeded(tmp_path):
    root = make_vggsound(tmp_path / "vgg")
    info, got = rows("vggsound", root, classes=["dog barking", "rain"], verify=False)
    assert info.classes == ["dog barking", "rain"] and len(got) == 4
    a = rows("vggsound", root, max_classes=2, per_class=1, seed=3)
    b = rows("vggsound", root, max_classes=2, per_class=1, seed=3)
    assert a[0].classes == b[0].classes and list(a[1]) == list(b[1])
    assert len(a[0].classes) == 2
    assert all(sum(s.label == c and s.split == sp for s in a[1].values()) <= 1
               for c in range(2) for sp in ("train", "test"))
    _, capped = rows("vggsound", root, max_train=2, max_test=1)
    assert sorted(capped) == ["yt_0-x_000000", "yt_1-x_000010", "yt_2-x_000020"]
    with pytest.raises(ValueError, match=r"corpus 'vggsound': option classes: \['cats'\]"):
        rows("vggsound", root, classes=["cats"])


def test_vggsound_missing_video_and_silent_video(tmp_path):
    root = make_vggsound(tmp_path / "vgg")
    (root / "video/yt_5-x_000050.mp4").unlink()
    with pytest.raises(FileNotFoundError, match=r"sample 'yt_5-x_000050': video file"):
        rows("vggsound", root)
    info, got = rows("vggsound", root, skip_missing=True)
    assert len(got) == 5 and info.classes == ["dog barking", "playing piano"]
    put(root, "video/yt_0-x_000000.mp4", video(0, "mp4", audio=False))
    with pytest.raises(ValueError, match=r"sample 'yt_0-x_000000': audio track of .*"
                                         r"unreadable \(no audio track\)"):
        rows("vggsound", root, skip_missing=True)


# ---------------------------------------------------------------- TVL
def test_tvl_single_table_layout(tmp_path):
    root = tmp_path / "tvl"
    for i in range(3):
        put(root, f"vision/{i}.jpg", image(i, "JPEG"))
        put(root, f"tactile/{i}.png", image(i + 7))
    put(root, "tvl.csv", "vision,tactile,caption,split\n"
                         "vision/0.jpg,tactile/0.png,\"smooth, hard\",train\n"
                         "vision/1.jpg,tactile/1.png,\"soft,\r\n fuzzy\",train\n"
                         "vision/2.jpg,tactile/2.png,,test\n")
    info, got = rows("tvl", root)
    assert set(info.modalities) == {"image", "tactile", "text"} and info.classes is None
    assert got["tvl_1"].data["text"] == ("txt", "soft, fuzzy")
    assert got["tvl_0"].data["image"] == ("jpg", (root / "vision/0.jpg").read_bytes())
    assert got["tvl_0"].data["tactile"] == ("png", (root / "tactile/0.png").read_bytes())
    assert got["tvl_2"].split == "test" and "text" not in got["tvl_2"].data
    put(root, "tvl.csv", "vision,tactile,caption,split\n../../etc/passwd,tactile/0.png,x,train\n")
    with pytest.raises(ValueError, match=r"sample 'tvl_0': image path .* leaves the corpus"):
        rows("tvl", root)


def test_tvl_released_tree(tmp_path):
    root = tmp_path / "tvl"
    put(root, "ssvtp/images_rgb/image_0_rgb.jpg", image(0, "JPEG"))
    put(root, "ssvtp/images_tac/image_0_tac.jpg", image(1, "JPEG"))
    put(root, "ssvtp/test.csv", "url,caption\nimages_rgb/image_0_rgb.jpg,\"rough, cold\"\n")
    put(root, "hct/data1/0/vision.jpg", image(2, "JPEG"))
    put(root, "hct/data1/0/tactile.jpg", image(3, "JPEG"))
    put(root, "hct/data1/train.csv", "url,tactile,caption\n0/vision.jpg,0/tactile.jpg,soft\n")
    _, got = rows("tvl", root)
    assert set(got) == {"ssvtp_test_0", "hct_data1_train_0"}
    assert got["ssvtp_test_0"].data["tactile"][1] == \
        (root / "ssvtp/images_tac/image_0_tac.jpg").read_bytes()
    assert got["hct_data1_train_0"].split == "train"
    (root / "hct/data1/0/tactile.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"sample 'hct_data1_train_0': tactile file"):
        rows("tvl", root)


# ---------------------------------------------------------------- LLVIP
def test_llvip_visible_infrared(tmp_path):
    root = tmp_path / "llvip"
    for i, split in enumerate(["train", "train", "test"]):
        put(root, f"LLVIP/visible/{split}/{190001 + i}.jpg", image(i, "JPEG"))
        put(root, f"LLVIP/infrared/{split}/{190001 + i}.jpg", image(i + 5, "JPEG", "L"))
    info, got = rows("llvip", root)  # the archive's LLVIP/ level is accepted
    assert set(info.modalities) == {"image", "thermal"}
    assert {k: s.split for k, s in got.items()} == {"190001": "train", "190002": "train",
                                                     "190003": "test"}
    assert got["190003"].data["thermal"] == \
        ("jpg", (root / "LLVIP/infrared/test/190003.jpg").read_bytes())
    (root / "LLVIP/infrared/train/190002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"corpus 'llvip': sample '190002': thermal file"):
        rows("llvip", root)


def test_open_corpus_knows_the_paper_adapters(tmp_path):
    root = make_nyudv2(tmp_path / "nyu")
    info, samples = open_corpus("nyu", root, "nyudv2")
    assert len(list(samples())) == 3 and info.name == "nyu"


# ---------------------------------------------------------------- HDF5 feature import
UCF_IDS = ["ApplyEyeMakeup_v_ApplyEyeMakeup_g01_c01", "YoYo_v_YoYo_g01_c01",
           "YoYo_v_YoYo_g02_c01"]


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


def test_import_features_round_trip(tmp_path):
    from cmcl.evaluate import load_split

    arrays = make_h5(tmp_path / "ucf101_test_imagebind.h5", UCF_IDS, 2)
    table = make_classes(tmp_path / "ucf101_class_imagebind.h5", ["YoYo", "ApplyEyeMakeup"])
    n = import_features(tmp_path / "ucf101_test_imagebind.h5", ["text", "video"],
                        tmp_path / "f", "test", "t1", tmp_path / "ucf101_class_imagebind.h5",
                        label_regex=r"^([A-Za-z]+)_v_")
    assert n == 3
    feats = read_features(tmp_path / "f")
    for i, sid in enumerate(UCF_IDS):  # sorted ids, rows in declared order
        np.testing.assert_array_equal(feats["text"][i], arrays[sid][0])
        np.testing.assert_array_equal(feats["video"][i], arrays[sid][1])
    assert feats["labels"].tolist() == [0, 1, 1]  # classes sorted: ApplyEyeMakeup, YoYo
    meta = feats["meta"]
    assert set(meta) == {"task", "split", "modalities", "count", "classes", "templates",
                         "encoders", "dims", "dtype", "sha256"}  # sha256: every file written
    assert meta["classes"] == ["ApplyEyeMakeup", "YoYo"] and meta["dims"] == {"text": 8,
                                                                               "video": 8}
    prompts = load_split(tmp_path / "f")["prompts"]
    assert tuple(prompts["prompts"].shape) == (2, 1, 8)
    np.testing.assert_array_equal(prompts["prompts"][1, 0].numpy(), table["YoYo"])
    assert prompts["class_ids"].tolist() == [0, 1]


def test_import_task_from_params_entry(tmp_path):
    root = tmp_path / "vggsound"
    ids = ["a_b_000010", "c_000020", "tensor(d_000030)"]
    arrays = make_h5(root / "vggsound_s_train_unibind.h5", ids, 3)
    make_classes(root / "vggsound_s_class_unibind.h5", ["dog", "piano"])
    put(root, "labels.csv", "id,label\na_b_000010,piano\nc_000020,dog\nd_000030,piano\n")
    corpus = {"path": str(root), "adapter": "features_h5",
              "options": {"encoder": "unibind", "dataset": "vggsound_s", "labels": "labels.csv",
                          "modalities": ["text", "audio", "video"]}}
    task = {"name": "av", "corpus": "vgg", "modalities": ["audio", "video"], "classes": [1]}
    assert import_task(task, corpus, "train", tmp_path / "f") == 2
    feats = read_features(tmp_path / "f")
    assert feats["meta"]["modalities"] == ["audio", "video"]
    assert feats["meta"]["encoders"]["audio"] == "precomputed:unibind"
    np.testing.assert_array_equal(feats["video"][1], arrays["tensor(d_000030)"][2])
    assert [json.loads(s["json"])["id"] for s in iter_samples(tmp_path / "f")] == \
        ["a_b_000010", "d_000030"]


def test_import_errors_name_the_sample_and_leave_nothing(tmp_path):
    h5 = tmp_path / "esc50_train_languagebind.h5"
    make_h5(h5, ["1-1-A-0.wav", "1-2-A-1.wav"], 2)
    with h5py.File(h5, "a") as f:
        f.create_dataset("1-3-A-2.wav", data=np.zeros((1, 8), np.float32))
    with pytest.raises(ValueError, match=r"esc50_train_languagebind\.h5: sample '1-3-A-2\.wav': "
                                         r"expected \[2, d\]"):
        import_features(h5, ["text", "audio"], tmp_path / "f", "train", "t2")
    assert not (tmp_path / "f").exists()
    labels = {"1-1-A-0.wav": "dog", "1-2-A-1.wav": "cat", "1-3-A-2.wav": "dog"}
    with h5py.File(h5, "a") as f:
        del f["1-3-A-2.wav"]
    make_classes(tmp_path / "cls.h5", ["dog", "rain"])
    with pytest.raises(ValueError, match=r"sample '1-2-A-1\.wav': label 'cat' not in the class"):
        import_features(h5, ["text", "audio"], tmp_path / "f", "train", "t2",
                        tmp_path / "cls.h5", labels=labels)
    assert not (tmp_path / "f").exists()


def test_features_h5_corpus_adapter(tmp_path):
    from cmcl.shards import load_npy

    arrays = make_h5(tmp_path / "llvip_test_imagebind.h5", ["1", "tensor(2)"], 2)
    make_h5(tmp_path / "llvip_train_imagebind.h5", ["3"], 2)
    info, got = rows("features_h5", tmp_path, encoder="imagebind", dataset="llvip",
                     modalities=["image", "thermal"])
    assert info.modalities == {"image": "file", "thermal": "file"} and info.classes is None
    assert {k: s.split for k, s in got.items()} == {"1": "test", "2": "test", "3": "train"}
    ext, payload = got["2"].data["thermal"]
    assert ext == "npy"
    np.testing.assert_array_equal(load_npy(payload, "x"), arrays["tensor(2)"][1])
    with pytest.raises(ValueError, match="needs the options `encoder`"):
        rows("features_h5", tmp_path, modalities=["image", "thermal"])


def test_imported_features_train_and_evaluate_unchanged(tmp_path):
    from cmcl.evaluate import evaluate_step
    from cmcl.train import init_step, train_step

    root = tmp_path / "ucf101"
    make_classes(root / "ucf101_class_imagebind.h5", ["ApplyEyeMakeup", "YoYo"])
    for split, groups in (("train", range(12)), ("test", range(12, 18))):  # disjoint ids
        make_h5(root / f"ucf101_{split}_imagebind.h5",
                [f"{c}_v_{c}_g{i:02d}_c01" for c in ("ApplyEyeMakeup", "YoYo") for i in groups],
                2, seed=len(split))
    corpus = {"path": str(root), "adapter": "features_h5",
              "options": {"encoder": "imagebind", "modalities": ["text", "video"],
                          "label_regex": "^([A-Za-z]+)_v_"}}
    task = {"name": "tv", "corpus": "ucf101", "modalities": ["text", "video"],
            "relevance": "label"}
    for split in ("train", "test"):
        import_task(task, corpus, split, tmp_path / f"f_{split}")
    cfg = {"model": {"embed_dim": 8, "init": "identity"}, "loss": {"preset": "paper"},
           "methods": {}, "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "weight_decay": 1e-3,
                                                    "grad_clip": 1.0},
           "eval": {"n_subsets": 1, "subset_size": 100}}
    init_step(cfg, "finetune", 1, [tmp_path / "f_train"], tmp_path / "step0")
    train_step(cfg, "finetune", 1, 1, task, tmp_path / "f_train", tmp_path / "step0",
               tmp_path / "step1")
    df = evaluate_step(cfg, tmp_path / "step1", [task], [tmp_path / "f_test"],
                       tmp_path / "e.parquet")
    assert {"r10", "map", "zs_acc"} <= set(df["metric"])
