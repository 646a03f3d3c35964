"""The adapter registry and what every adapter shares: open_corpus knows the paper adapters,
and a sample listed in both splits stops the job from the metadata alone (before any file is
decoded), naming the count and the ids."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from helpers.paper_corpora import (
    image,
    make_clotho,
    make_esc50,
    make_nyudv2,
    make_ucf101,
    make_vggsound,
    put,
    rows,
    video,
    wav,
)

from cmcl.corpora import open_corpus


def test_open_corpus_knows_the_paper_adapters(tmp_path):
    root = make_nyudv2(tmp_path / "nyu")
    info, samples = open_corpus("nyu", root, "nyudv2")
    assert len(list(samples())) == 3 and info.name == "nyu"


def nyudv2(root: Path) -> str:
    make_nyudv2(root)  # 0000 and 0001 are training images
    put(root, "test/rgb/0000.png", image(9))
    put(root, "test/depth/0000.png", image(9, mode="I;16"))
    return "'0000' (train and test)"


def llvip(root: Path) -> str:
    for split in ("train", "test"):
        put(root, f"visible/{split}/190001.jpg", image(1, "JPEG"))
        put(root, f"infrared/{split}/190001.jpg", image(2, "JPEG", "L"))
    return "'190001'"


def ucf101(root: Path) -> str:
    make_ucf101(root)  # split 1 trains on g08 of ApplyEyeMakeup: list it for testing too
    put(root, "ucfTrainTestlist/testlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\nYoYo/v_YoYo_g01_c01.avi\r\n"
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi\r\n")
    return "'v_ApplyEyeMakeup_g08_c01'"


def vggsound(root: Path) -> str:
    make_vggsound(root)  # clip yt_0-x at 0 s is a training clip: list it as a test clip too
    text = (root / "vggsound.csv").read_text()
    put(root, "vggsound.csv", text + "yt_0-x,0,dog barking,test\n")
    put(root, "video/yt_0-x_000000.mp4", video(0, "mp4", audio=True))
    return "'yt_0-x_000000'"


def clotho(root: Path) -> str:
    make_clotho(root)  # birds.wav is a development clip: ship it in the evaluation part too
    put(root, "clotho_audio_evaluation/birds.wav", wav(3))
    buf = io.StringIO()
    csv.writer(buf).writerows([["file_name"] + [f"caption_{k}" for k in range(1, 6)],
                               ["street, night.wav"] + ["street"] * 5,
                               ["birds.wav"] + ["birds"] * 5])
    put(root, "clotho_captions_evaluation.csv", buf.getvalue())
    return "'birds'"


def esc50(root: Path) -> str:
    make_esc50(root)  # 1-1000-A-0.wav is in fold 1 (train): list it in fold 5 (test) too
    meta = root / "meta/esc50.csv"
    meta.write_text(meta.read_text() + "1-1000-A-0.wav,5,0,dog,False,1000,A\n")
    return "'1-1000-A-0'"


def tvl(root: Path) -> str:
    for i in range(2):
        put(root, f"vision/{i}.jpg", image(i, "JPEG"))
        put(root, f"tactile/{i}.png", image(i + 7))
    put(root, "tvl.csv", "vision,tactile,caption,split\n"
                         "vision/0.jpg,tactile/0.png,smooth,train\n"
                         "vision/1.jpg,tactile/1.png,soft,train\n"
                         "vision/0.jpg,tactile/0.png,smooth,test\n")
    return "vision/0.jpg"


@pytest.mark.parametrize("make", [nyudv2, llvip, ucf101, vggsound, clotho, esc50, tvl],
                         ids=lambda f: f.__name__)
def test_a_sample_in_both_splits_stops_the_adapter(make, tmp_path, monkeypatch):
    from cmcl.corpora import media

    root = tmp_path / make.__name__
    shown = make(root)
    decoded = []
    monkeypatch.setattr(media.Reader, "read", lambda self, *a, **k: decoded.append(a))
    with pytest.raises(ValueError, match=r"1 sample id\(s\) are in more than one split "
                                         r"\(train/test overlap\)") as e:
        rows(make.__name__, root)
    assert shown in str(e.value) and f"corpus '{make.__name__}'" in str(e.value)
    assert not decoded  # found from the metadata, before any file is read


def test_adapters_declared_in_the_sources_are_those_registered():
    """Start-up knows the adapter names without importing them; open_corpus registers every
    module of the package, so an adapter is one new file (no list to extend)."""
    import subprocess
    import sys

    from cmcl.corpora import ADAPTERS, _register_all, adapter_names

    _register_all()
    assert adapter_names() == sorted(ADAPTERS)
    assert {"generic", "features_h5", "ucf101", "llvip"} <= set(adapter_names())
    code = ("import sys\nfrom cmcl.corpora import adapter_names\nadapter_names()\n"
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_unknown_adapter_is_refused_at_startup_naming_the_key(tmp_path):
    import yaml
    from helpers.data import ROOT

    from cmcl.config import ParamsError, check

    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["corpora"]["mine"] = {"path": str(tmp_path), "adapter": "ucf_101"}
    with pytest.raises(ParamsError, match=r"corpora.mine.adapter: 'ucf_101' is not a corpus "
                                          r"adapter \(\['clotho', "):
        check(p)


def test_class_names_resolve_in_nfc_and_a_name_twice_is_refused(tmp_path):
    """A decomposed 'ü' in one place and a composed one in another name the same class."""
    import json
    import unicodedata

    from cmcl.corpora import class_names, resolve_classes, startup_classes

    nfc, nfd = (unicodedata.normalize(f, "grüne Welle") for f in ("NFC", "NFD"))
    assert nfc != nfd
    assert resolve_classes([nfd, "rot"], ["rot", nfc], "tasks.t.classes") == [1, 0]
    assert resolve_classes([nfc], ["rot", nfd], "tasks.t.classes") == [1]
    assert class_names(["rot", nfd], "corpus.json") == ["rot", nfc]
    with pytest.raises(ValueError, match=r"corpus\.json: `classes` lists \['grüne Welle'\] more "
                                         r"than once \(compared in Unicode NFC\)"):
        class_names([nfc, "rot", nfd], "corpus.json")
    with pytest.raises(ValueError, match=r"`classes` must be a list of class-name strings"):
        class_names(["rot", 3], "corpus.json")
    (tmp_path / "c").mkdir()
    (tmp_path / "c/corpus.json").write_text(json.dumps({"classes": ["rot", nfd]}))
    assert startup_classes({"path": str(tmp_path / "c")}) == (True, ["rot", nfc])
