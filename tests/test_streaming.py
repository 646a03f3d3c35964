"""Streaming readers: per-epoch seeded shuffling, rank x worker splitting, padding/dropping."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from torch.utils.data import DataLoader

from cmcl.shards import npy_bytes, read_features, write_shards
from cmcl.streams import FeatureStream, SampleStream


def feature_dir(path, n: int, per_shard: int, d: int = 3):
    path.mkdir()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d)).astype(np.float32)
    recs = ({"__key__": f"k{i:03d}", "json": {"id": f"s{i}", "label": i % 4}, "cls": i % 4,
             "image.npy": npy_bytes(x[i]), "text.npy": npy_bytes(-x[i])} for i in range(n))
    write_shards(path, recs, per_shard)
    (path / "meta.json").write_text(json.dumps({"modalities": ["image", "text"]}))
    return path


def epoch_keys(stream_args: dict, world: int, workers: int, epoch: int) -> list[list[str]]:
    """Keys each rank sees in one epoch, through a real DataLoader with `workers` workers."""
    out = []
    for rank in range(world):
        s = SampleStream(**stream_args, rank=rank, world_size=world)
        s.set_epoch(epoch)
        dl = DataLoader(s, batch_size=None, num_workers=workers)
        out.append([x["__key__"] for x in dl])
    return out


def test_two_ranks_two_workers_see_every_sample_once_per_epoch(tmp_path):
    d = feature_dir(tmp_path / "f", 40, per_shard=7)  # 6 shards of uneven size
    args = {"directory": d, "shuffle": True, "seed": 3, "buffer_size": 5}
    orders = []
    for epoch in (0, 1):
        per_rank = epoch_keys(args, world=2, workers=2, epoch=epoch)
        assert [len(k) for k in per_rank] == [20, 20]
        seen = per_rank[0] + per_rank[1]
        assert sorted(seen) == [f"k{i:03d}" for i in range(40)]  # all, exactly once
        orders.append(seen)
    assert orders[0] != orders[1]  # a new order each epoch
    assert epoch_keys(args, 2, 2, 1)[0] + epoch_keys(args, 2, 2, 1)[1] == orders[1]  # seeded
    other = epoch_keys({**args, "seed": 4}, 2, 2, 1)
    assert other[0] + other[1] != orders[1]


def test_uneven_counts_pad_drop_or_exact(tmp_path):
    d = feature_dir(tmp_path / "f", 11, per_shard=4)
    for even, per_rank, dupes, missing in (("pad", [4, 4, 4], 1, 0), ("drop", [3, 3, 3], 0, 2),
                                           (None, [3, 4, 4], 0, 0)):
        keys = epoch_keys({"directory": d, "shuffle": True, "even": even}, 3, 2, epoch=2)
        assert [len(k) for k in keys] == per_rank
        counts = Counter(k for ks in keys for k in ks)
        assert sum(c - 1 for c in counts.values()) == dupes
        assert 11 - len(counts) == missing
        assert len(SampleStream(d, rank=0, world_size=3, even=even)) == per_rank[0]


def test_unshuffled_stream_is_the_folder_order(tmp_path):
    d = feature_dir(tmp_path / "f", 10, per_shard=3)
    s = SampleStream(d, rank=0, world_size=1)
    assert [x["__key__"] for x in s] == [f"k{i:03d}" for i in range(10)]
    with pytest.raises(ValueError, match="rank 2 is not in 0..1"):
        SampleStream(d, rank=2, world_size=2)


def test_feature_stream_batches_match_read_features(tmp_path):
    d = feature_dir(tmp_path / "f", 30, per_shard=8)
    ref = read_features(d)
    s = FeatureStream(d, batch_size=4, shuffle=True, seed=1, rank=0, world_size=1)
    batches = list(DataLoader(s, batch_size=None, num_workers=2))
    assert sorted(len(b["keys"]) for b in batches) == [3] * 2 + [4] * 6  # 15 per worker
    pos = {k: i for i, k in enumerate(ref["keys"])}
    for b in batches:
        idx = [pos[k] for k in b["keys"]]
        np.testing.assert_array_equal(b["image"].numpy(), ref["image"][idx])
        np.testing.assert_array_equal(b["text"].numpy(), ref["text"][idx])
        assert b["labels"].tolist() == ref["labels"][idx].tolist()
