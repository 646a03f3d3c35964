"""ESC-50: folds and classes, unreadable audio named."""

from __future__ import annotations

import pytest
from helpers.paper_corpora import make_esc50, put, rows


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
