"""Clotho: one caption per clip or all five, missing audio named."""

from __future__ import annotations

import pytest
from helpers.paper_corpora import make_clotho, rows


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
