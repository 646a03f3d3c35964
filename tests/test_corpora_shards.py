import json

import numpy as np
import pytest

from cmcl.corpora import open_corpus
from cmcl.shards import iter_samples, read_features, shard_task, task_pairs

TASK = {"name": "ti", "corpus": "c", "modalities": ["text", "image"], "pairing": "sample"}


def test_generic_adapter_reads_every_row(corpus):
    info, samples = open_corpus("c", corpus)
    rows = list(samples())
    assert len(rows) == 48 and info.classes[2] == "two"
    img = next(s for s in rows if "image" in s.data)
    assert img.data["image"][0] == "png" and img.data["text"][0] == "txt"


def test_missing_file_names_corpus_sample_and_file(corpus):
    (corpus / "img/0_3.png").unlink()
    _, samples = open_corpus("c", corpus)
    with pytest.raises(FileNotFoundError, match=r"corpus 'c': sample 'i03': image file .*0_3\.png"):
        list(samples())


def test_label_outside_class_list_is_refused(corpus):
    lines = (corpus / "manifest.jsonl").read_text().splitlines()
    row = json.loads(lines[0]) | {"label": 7}
    (corpus / "manifest.jsonl").write_text("\n".join([json.dumps(row), *lines[1:]]))
    _, samples = open_corpus("c", corpus)
    with pytest.raises(ValueError, match="sample 'i00': label 7 not in the class list"):
        list(samples())


def test_path_escaping_the_corpus_is_refused(corpus):
    lines = (corpus / "manifest.jsonl").read_text().splitlines()
    row = json.loads(lines[0]) | {"image": "../../etc/passwd"}
    (corpus / "manifest.jsonl").write_text("\n".join([json.dumps(row), *lines[1:]]))
    _, samples = open_corpus("c", corpus)
    with pytest.raises(ValueError, match="leaves the corpus folder"):
        list(samples())


def test_class_pairing_matches_labels_and_uses_every_item(corpus):
    _, samples = open_corpus("c", corpus)
    task = {"name": "ia", "modalities": ["image", "audio"], "pairing": "class"}
    pairs = task_pairs(task, samples(), "train", seed=1)
    assert len(pairs) == 16  # 4 classes x 4 train items on each side
    ids = {k.split("+")[0] for k, _, _ in pairs} | {k.split("+")[1] for k, _, _ in pairs}
    assert len(ids) == 32
    for key, label, _ in pairs:
        a, b = key.split("+")
        assert int(a[1]) == int(b[1]) == label


def test_shards_round_trip(corpus, tmp_path):
    out = tmp_path / "shards"
    corp = {"path": str(corpus)}
    n = shard_task(TASK | {"classes": [0, 1]}, corp, "train", out, samples_per_shard=3)
    sizes = json.loads((out / "sizes.json").read_text())
    assert n == 8 and sum(sizes.values()) == 8 and len(sizes) == 3
    got = list(iter_samples(out))
    _, samples = open_corpus("c", corpus)
    src = {s.id: s for s in samples()}
    for s in got:
        orig = src[json.loads(s["json"])["id"]]
        assert s["image.png"] == orig.data["image"][1]
        assert s["text.txt"].decode() == orig.data["text"][1]
        assert int(s["cls"]) == orig.label


def test_empty_split_and_missing_modality_are_errors(corpus, tmp_path):
    corp = {"path": str(corpus)}
    with pytest.raises(ValueError, match="split 'val' .* has no sample"):
        shard_task(TASK, corp, "val", tmp_path / "x")
    with pytest.raises(ValueError, match="has no modality 'depth'"):
        shard_task(TASK | {"modalities": ["text", "depth"]}, corp, "train", tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


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


def test_corrupt_npy_names_the_sample(corpus, tmp_path):
    """Sharding loads each .npy once and names the corpus file; unverified (`verify: false`)
    it reaches `embed`, which names the shard member."""
    from cmcl.embed import embed_split

    (corpus / "aud/1_3.npy").write_bytes(b"\x93NUMPY garbage")
    task = {"name": "ia", "corpus": "c", "modalities": ["image", "audio"], "pairing": "class"}
    with pytest.raises(ValueError, match=r"corpus 'c': sample 'a13': audio file .*aud/1_3\.npy "
                                         r"is unreadable \(invalid \.npy: "):
        shard_task(task, {"path": str(corpus)}, "train", tmp_path / "s")
    assert not (tmp_path / "s").exists()
    shard_task(task, {"path": str(corpus), "options": {"verify": False}}, "train", tmp_path / "s")
    with pytest.raises(ValueError, match=r"\+a13\.audio\.npy: not a readable \.npy"):
        embed_split(tmp_path / "s", tmp_path / "f", {"image": "pixels", "audio": "mfcc_stats"})
    assert not (tmp_path / "f").exists()


def test_bad_samples_skipped_on_request_are_listed(corpus, tmp_path):
    (corpus / "img/1_3.png").unlink()
    corp = {"path": str(corpus), "options": {"on_error": "skip"}}
    n = shard_task(TASK, corp, "train", tmp_path / "s")
    assert n == 15  # 16 train images, one missing
    rejected = [json.loads(x) for x in (tmp_path / "s/rejected.jsonl").read_text().splitlines()]
    assert rejected == [{"corpus": "c", "id": "i13", "reason": rejected[0]["reason"]}]
    assert "image file" in rejected[0]["reason"] and "1_3.png" in rejected[0]["reason"]
    assert json.loads((tmp_path / "s/meta.json").read_text())["rejected"] == 1
    with pytest.raises(ValueError, match="option on_error must be 'raise' or 'skip'"):
        shard_task(TASK, {"path": str(corpus), "options": {"on_error": "ignore"}}, "train",
                   tmp_path / "t")


def test_sharding_is_deterministic_and_indexed(corpus, tmp_path):
    import pyarrow.parquet as pq

    for out in ("a", "b"):
        shard_task(TASK, {"path": str(corpus)}, "train", tmp_path / out, samples_per_shard=5)
    for f in sorted((tmp_path / "a").glob("*.tar")):
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes()  # byte-identical
    index = pq.read_table(tmp_path / "a/index.parquet").to_pylist()
    assert len(index) == 16
    first = index[0]
    raw = (tmp_path / "a" / first["shard"]).read_bytes()
    member = raw[first["offset"]: first["offset"] + first["nbytes"]]
    assert first["key"].encode() in member[:100]  # the offset points at the sample's header


def test_tars_equal_webdataset_tarwriter(tmp_path):
    """cmcl.tario writes what webdataset's TarWriter(mtime=0) writes, byte for byte."""
    import webdataset as wds

    from cmcl.shards import write_shards

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


def test_index_has_ids_splits_labels_and_byte_ranges(corpus, tmp_path):
    import pyarrow.parquet as pq

    task = {"name": "ia", "corpus": "c", "modalities": ["image", "audio"], "pairing": "class"}
    shard_task(task, {"path": str(corpus)}, "test", tmp_path / "s", samples_per_shard=3)
    table = pq.read_table(tmp_path / "s/index.parquet")
    assert table.column_names == ["key", "id", "split", "label", "shard", "offset", "nbytes"]
    rows = table.to_pylist()
    samples = list(iter_samples(tmp_path / "s"))
    assert [r["key"] for r in rows] == [s["__key__"] for s in samples]
    for r, s in zip(rows, samples, strict=True):
        assert r["id"] == json.loads(s["json"])["id"] and "+" in r["id"]
        assert r["split"] == "test" and r["label"] == int(s["cls"])
        raw = (tmp_path / "s" / r["shard"]).read_bytes()[r["offset"]: r["offset"] + r["nbytes"]]
        assert raw.startswith(f"{r['key']}.".encode()) and raw.endswith(s["json"])
    shard_task(TASK, {"path": str(corpus)}, "test", tmp_path / "t")  # captions: no label column
    none = tmp_path / "u"
    none.mkdir()
    from cmcl.shards import write_shards

    write_shards(none, [{"__key__": "k", "x.txt": "a"}], 10)
    row = pq.read_table(none / "index.parquet").to_pylist()[0]
    assert row["id"] is None and row["label"] is None and row["split"] is None


def test_shards_roll_over_at_max_bytes_and_workers_do_not_change_bytes(corpus, tmp_path):
    corp = {"path": str(corpus)}
    sizes = {}
    for w in (1, 2):
        out = tmp_path / f"w{w}"
        shard_task(TASK, corp, "train", out, samples_per_shard=100, workers=w,
                   max_shard_bytes=12 * 1024)
        sizes[w] = json.loads((out / "sizes.json").read_text())
    assert sizes[1] == sizes[2] and len(sizes[1]) > 1 and sum(sizes[1].values()) == 16
    files = sorted(p.name for p in (tmp_path / "w1").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "w2").iterdir())
    for name in files:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()
    for tar in (tmp_path / "w1").glob("*.tar"):
        assert tar.stat().st_size <= 12 * 1024 and tar.stat().st_size % 10240 == 0
    assert list(iter_samples(tmp_path / "w1"))[0]["text.txt"]


def test_only_the_requested_split_is_read(corpus, tmp_path):
    (corpus / "img/1_4.png").unlink()  # a train sample: the test split never opens it
    corp = {"path": str(corpus)}
    assert shard_task(TASK, corp, "test", tmp_path / "s", workers=2) == 8
    with pytest.raises(FileNotFoundError, match="sample 'i14'"):
        shard_task(TASK, corp, "train", tmp_path / "t", workers=2)
    _, samples = open_corpus("c", corpus)
    assert {s.split for s in samples("test")} == {"test"}


def test_read_features_refuses_mixed_shapes_and_truncated_npy(tmp_path):
    from cmcl.shards import npy_bytes, write_shards

    def folder(name, arrays, raw=None):
        d = tmp_path / name
        d.mkdir()
        recs = [{"__key__": f"k{i}", "cls": i, "image.npy": raw if raw and i == 2 else npy_bytes(a)}
                for i, a in enumerate(arrays)]
        write_shards(d, recs, 2)
        (d / "meta.json").write_text(json.dumps({"modalities": ["image"]}))
        return d

    ok = [np.arange(4, dtype=np.float16) + i for i in range(5)]
    feats = read_features(folder("ok", ok))
    np.testing.assert_array_equal(feats["image"], np.stack(ok).astype(np.float32))
    assert feats["image"].dtype == np.float32 and list(feats["labels"]) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"000001\.tar:k2\.image\.npy: 'image' features of "
                                         r"shape \(5,\)"):
        read_features(folder("shape", [*ok[:2], np.zeros(5, np.float16), *ok[3:]]))
    with pytest.raises(ValueError, match=r"dtype float32, but earlier samples have \(4,\) and "
                                         "float16"):
        read_features(folder("dtype", [*ok[:2], np.zeros(4, np.float32), *ok[3:]]))
    with pytest.raises(ValueError, match=r"k2\.image\.npy: not a readable \.npy"):
        read_features(folder("cut", ok, raw=npy_bytes(ok[0])[:-2]))


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
    from cmcl.shards import npy_bytes, write_shards

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
