"""Streaming readers (webdataset pipelines): per-epoch seeded shuffling, rank x worker
splitting, padding/dropping, errors naming the tar, no unpickling."""

from __future__ import annotations

import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from torch.utils.data import DataLoader

from cmcl.shards import iter_samples, npy_bytes, read_features, write_shards
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


def epoch_keys(stream_args: dict, world: int, workers: int, epoch: int,
               context: str | None = None) -> list[list[str]]:
    """Keys each rank sees in one epoch, through a real DataLoader with `workers` workers."""
    out = []
    for rank in range(world):
        s = SampleStream(**stream_args, rank=rank, world_size=world)
        s.set_epoch(epoch)
        dl = DataLoader(s, batch_size=None, num_workers=workers, multiprocessing_context=context)
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


def test_unshuffled_stream_is_the_folder_order(tmp_path, monkeypatch):
    d = feature_dir(tmp_path / "f", 10, per_shard=3)
    s = SampleStream(d, rank=0, world_size=1)
    assert [x["__key__"] for x in s] == [f"k{i:03d}" for i in range(10)]
    with pytest.raises(ValueError, match="rank 2 is not in 0..1"):
        SampleStream(d, rank=2, world_size=2)
    monkeypatch.setenv("WORKER", "0")  # webdataset's worker override: half the samples, silently
    monkeypatch.setenv("NUM_WORKERS", "2")
    with pytest.raises(ValueError, match="WORKER/NUM_WORKERS are set in the environment"):
        list(s)


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


def test_spawned_workers_keep_the_rank_given_to_the_stream(tmp_path):
    """The stream is webdataset's pipeline, pickled into spawned workers (which see no process
    group): they read what forked workers read."""
    d = feature_dir(tmp_path / "f", 23, per_shard=5)
    args = {"directory": d, "shuffle": True, "seed": 2, "buffer_size": 4}
    assert isinstance(SampleStream(d), wds.DataPipeline)
    assert epoch_keys(args, 2, 2, 1, "spawn") == epoch_keys(args, 2, 2, 1, "fork")


class _Touch:
    """A pickle that creates a file when loaded: proof that nothing unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def test_no_member_is_ever_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Touch(marker))
    pickle.loads(payload)  # the payload is live
    assert marker.exists()
    marker.unlink()
    d = tmp_path / "f"
    d.mkdir()
    x = np.ones(3, np.float32)
    write_shards(d, [{"__key__": f"k{i}", "cls": 1, "image.npy": npy_bytes(x), "text.npy":
                      npy_bytes(x), "x.pyd": payload, "y.pickle": payload, "z.pkl": payload}
                     for i in range(4)], 3)
    (d / "meta.json").write_text(json.dumps({"modalities": ["image", "text"]}))
    raw = list(iter_samples(d)) + list(SampleStream(d, shuffle=True))
    assert len(raw) == 8 and all(s[k] == payload for s in raw for k in ("x.pyd", "y.pickle"))
    batches = list(DataLoader(FeatureStream(d, batch_size=2), batch_size=None, num_workers=1))
    assert [len(b["keys"]) for b in batches] == [2, 2]
    assert not marker.exists()
    obj = tmp_path / "o"  # a .npy of Python objects would need unpickling: refused
    obj.mkdir()
    write_shards(obj, [{"__key__": "k0", "image.npy": npy_bytes(x), "text.npy": _object_npy()}],
                 3)
    (obj / "meta.json").write_text(json.dumps({"modalities": ["image", "text"]}))
    with pytest.raises(ValueError, match=r"000000\.tar:k0\.text\.npy: not a readable \.npy"):
        list(FeatureStream(obj))


def _object_npy() -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buf.getvalue()


def test_streamed_reads_name_a_cut_or_corrupt_tar(tmp_path):
    """tarfile's stream mode stops silently at a cut or corrupt header: the counts that
    index.parquet and sizes.json give turn that into an error naming the tar."""
    d = feature_dir(tmp_path / "f", 6, per_shard=6)
    tar = d / "000000.tar"
    raw = bytearray(tar.read_bytes())
    third = raw.index(b"k002.cls")
    raw[third + 125] = ord("7")  # k002's first header no longer matches its checksum
    tar.write_bytes(bytes(raw))
    for read in (lambda: list(SampleStream(d)), lambda: list(iter_samples(d))):
        with pytest.raises(ValueError, match=r"000000\.tar: corrupt tar \(a header after sample "
                                             r"'k001' is unreadable; .*6 samples.*, 2 read\)"):
            read()
    tar.write_bytes(bytes(raw[:third]))
    with pytest.raises(ValueError, match=r"000000\.tar: truncated tar \(the index expects \d+ "
                                         rf"bytes, the file has {third}\)"):
        list(SampleStream(d))
    with pytest.raises(ValueError, match=r"000000\.tar: truncated tar \(the file ends after "
                                         r"sample 'k001'; sizes.json lists 6 samples, 2 read\)"):
        list(iter_samples(d))
