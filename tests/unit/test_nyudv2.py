"""NYUDv2: RGB/depth pairs, missing or 8-bit depth named."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers.paper_corpora import image, make_nyudv2, put, rows
from PIL import Image


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
