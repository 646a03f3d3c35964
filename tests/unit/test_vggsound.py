"""VGGSound: video, its audio track and the label text; sharding in workers; the seeded
VGGSound-S subset; missing and silent videos."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from helpers.paper_corpora import make_vggsound, put, rows, video

from cmcl.shards import shard_task

sf = pytest.importorskip("soundfile")


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
