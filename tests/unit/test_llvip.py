"""LLVIP: visible/infrared pairs, with or without the archive's LLVIP/ level."""

from __future__ import annotations

import pytest
from helpers.paper_corpora import image, put, rows


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
