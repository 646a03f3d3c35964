"""The tar reader and writer: webdataset's TarWriter bytes, tars of other writers (GNU, ustar,
PAX names), corrupt or cut tars named, merged samples and unsafe member paths refused."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from cmcl.io import write_json
from cmcl.shards import iter_samples, npy_bytes, read_features, write_shards


def test_tars_equal_webdataset_tarwriter(tmp_path):
    """cmcl.tario writes what webdataset's TarWriter(mtime=0) writes, byte for byte."""
    import webdataset as wds

    rng = np.random.default_rng(0)
    recs = [{"__key__": f"s{i}" + "x" * (120 * (i == 2)), "json": {"id": f"a{i}", "label": i},
             "cls": i, "text.txt": "é" * i, "image.png": rng.bytes(int(rng.integers(0, 2000)))}
            for i in range(5)]
    (tmp_path / "a").mkdir()
    write_shards(tmp_path / "a", recs, samples_per_shard=100)
    with wds.TarWriter(str(tmp_path / "b.tar"), mtime=0) as w:
        for r in recs:
            w.write(r)
    assert (tmp_path / "a/000000.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    got = list(iter_samples(tmp_path / "a"))  # long (PAX) names read back too
    assert [s["__key__"] for s in got] == [r["__key__"] for r in recs]
    assert got[3]["text.txt"].decode() == "ééé" and got[4]["image.png"] == recs[4]["image.png"]


@pytest.mark.parametrize("fmt", ["GNU_FORMAT", "USTAR_FORMAT", "PAX_FORMAT"])
def test_tars_from_other_writers_are_read(tmp_path, fmt):
    """Long names come as GNU 'L' records, ustar prefixes or PAX headers: all are read."""
    import io
    import tarfile

    long = "d" * 60 + "/" + "k" * 70
    with tarfile.open(tmp_path / "000000.tar", "w", format=getattr(tarfile, fmt)) as tar:
        for name, data in ((f"{long}.x.txt", b"one"), (f"{long}.cls", b"2"), ("s2.x.txt", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "sizes.json").write_text('{"000000.tar": 2}')
    got = list(iter_samples(tmp_path))
    assert [(s["__key__"], s.get("x.txt")) for s in got] == [(long, b"one"), ("s2", b"")]
    assert got[0]["cls"] == b"2"


def test_corrupt_or_truncated_tars_are_named(tmp_path):
    d = tmp_path / "f"
    d.mkdir()
    write_shards(d, [{"__key__": f"k{i}", "image.npy": npy_bytes(np.zeros(3, np.float32))}
                     for i in range(3)], 10)
    (d / "meta.json").write_text(json.dumps({"modalities": ["image"]}))
    tar = d / "000000.tar"
    raw = bytearray(tar.read_bytes())
    assert read_features(d)["image"].shape == (3, 3)
    second = raw.index(b"k1.image.npy")
    tar.write_bytes(bytes(raw[:second + 130]))  # cut inside the second member's header
    with pytest.raises(ValueError, match=rf"000000\.tar: truncated tar \(the header at byte "
                                         rf"{second} is cut short\)"):
        read_features(d)
    raw[second + 125] = ord("7")  # the size field of k1's header: checksum no longer matches
    tar.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=rf"000000\.tar: corrupt tar header at byte {second}"):
        read_features(d)
    tar.write_bytes(bytes(raw[:second]) + raw[second:second + 512] + b"\0" * 10)
    raw = bytearray(tar.read_bytes())
    raw[second + 125] = ord("0")  # restore the header: now its data runs past the end
    tar.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"000000\.tar: truncated tar"):
        read_features(d)


def test_tar_reader_refuses_merged_samples(tmp_path):
    """A foreign tar with two consecutive records of one key is refused, not merged."""
    d = tmp_path / "s"
    d.mkdir()
    with tarfile.open(d / "000000.tar", "w") as tar:
        for name, data in (("k.txt", b"a"), ("k.cls", b"1"), ("k.txt", b"b")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    (d / "sizes.json").write_text(json.dumps({"000000.tar": 2}))
    with pytest.raises(ValueError, match=r"000000\.tar: member 'k\.txt' appears twice: two "
                                         r"samples share the key 'k'"):
        list(iter_samples(d))


def _tar_with_member(path, name: str, payload: bytes) -> None:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))


def test_tar_with_parent_member_is_refused(tmp_path):
    from cmcl.shards import iter_samples

    _tar_with_member(tmp_path / "000000.tar", "../evil.image.npy", b"x")
    write_json(tmp_path / "sizes.json", {"000000.tar": 1})
    with pytest.raises(ValueError, match=r"000000\.tar: member '\.\./evil' has an unsafe path"):
        list(iter_samples(tmp_path))
