"""TVL: the single-table layout and the released tree."""

from __future__ import annotations

import pytest
from helpers.paper_corpora import image, put, rows


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
