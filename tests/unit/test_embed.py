"""The embed stage: feature shards from raw shards, independent of the batch size, readable by
a webdataset pipeline; a raw shard cut short is named."""

from __future__ import annotations

import numpy as np
import pytest

from cmcl.shards import iter_samples, read_features, shard_task


def test_embed_writes_feature_shards(corpus, tmp_path):
    from cmcl.embed import embed_split

    corp = {"path": str(corpus)}
    task = {"name": "ia", "corpus": "c", "modalities": ["image", "audio"], "pairing": "class"}
    shard_task(task, corp, "test", tmp_path / "s")
    embed_split(tmp_path / "s", tmp_path / "f", {"image": "pixels", "audio": "mfcc_stats"})
    feats = read_features(tmp_path / "f")
    assert feats["image"].shape == (8, 64) and feats["audio"].shape == (8, 26)
    assert feats["image"].min() >= 0 and feats["image"].max() <= 1
    np.testing.assert_array_equal(np.sort(feats["labels"]), np.repeat(np.arange(4), 2))


def test_streamed_embedding_does_not_depend_on_batch_size(corpus, tmp_path):
    from cmcl.embed import embed_split
    from cmcl.encoders import get_encoder

    task = {"name": "ia", "corpus": "c", "modalities": ["image", "audio"], "pairing": "class"}
    shard_task(task, {"path": str(corpus)}, "train", tmp_path / "s", samples_per_shard=5)
    enc = {"image": "pixels", "audio": "mfcc_stats"}
    for b in (3, 1000):
        assert embed_split(tmp_path / "s", tmp_path / f"f{b}", enc, batch_size=b) == 16
    for f in sorted((tmp_path / "f3").iterdir()):
        assert f.read_bytes() == (tmp_path / "f1000" / f.name).read_bytes(), f.name
    raw = list(iter_samples(tmp_path / "s"))
    want = get_encoder("pixels").encode([s["image.png"] for s in raw], ["x"] * len(raw))
    np.testing.assert_array_equal(read_features(tmp_path / "f3")["image"], want)


def test_feature_shards_read_by_a_webdataset_pipeline(corpus, tmp_path):
    """Interop: the open_clip-style consumer (`wds.WebDataset`) reads cmcl's feature shards
    to the same keys, labels and arrays as cmcl's own reader."""
    import webdataset as wds

    from cmcl.embed import embed_split
    from cmcl.shards import shard_urls

    task = {"name": "ia", "corpus": "c", "modalities": ["image", "audio"], "pairing": "class"}
    shard_task(task, {"path": str(corpus)}, "train", tmp_path / "s", samples_per_shard=4)
    embed_split(tmp_path / "s", tmp_path / "f", {"image": "pixels", "audio": "mfcc_stats"})
    ours = read_features(tmp_path / "f")
    theirs = list(wds.WebDataset(shard_urls(tmp_path / "f"), shardshuffle=False,
                                 empty_check=False).decode())
    assert [s["__key__"] for s in theirs] == ours["keys"]
    assert [int(s["cls"]) for s in theirs] == ours["labels"].tolist()
    for m in ("image", "audio"):
        np.testing.assert_array_equal(np.stack([s[f"{m}.npy"] for s in theirs]), ours[m])


TASK = {"name": "ti", "corpus": "c", "modalities": ["text", "image"]}


def test_truncated_raw_shard_is_named_in_embed(corpus, tmp_path):
    """embed reads raw shards by index.parquet byte ranges: a tar cut short used to raise a
    bare `IndexError: index out of range` from the tar walker."""
    from cmcl.embed import embed_split

    shard_task(TASK | {"modalities": ["image", "audio"], "pairing": "class"},
               {"path": str(corpus)}, "train", tmp_path / "s")
    import pyarrow.parquet as pq

    tar = tmp_path / "s/000000.tar"
    raw = tar.read_bytes()
    at = pq.read_table(tmp_path / "s/index.parquet").column("offset").to_pylist()[8]
    for cut in (at + 700, at):  # inside a member; exactly before a sample's first header
        tar.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match=r"000000\.tar: truncated tar"):
            embed_split(tmp_path / "s", tmp_path / "f", {"image": "pixels",
                                                         "audio": "mfcc_stats"})
        with pytest.raises(ValueError, match=r"000000\.tar: truncated tar"):
            list(iter_samples(tmp_path / "s"))
        assert not (tmp_path / "f").exists()
