"""Sharding a task: class pairing, round trips, empty splits and absent modalities, skipped
samples listed, deterministic tars with a byte-range index, roll-over by size, one split read,
class names resolved; reading features back refuses mixed shapes and missing shards."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmcl.corpora import open_corpus
from cmcl.io import write_json
from cmcl.shards import iter_samples, npy_bytes, read_features, shard_task, task_pairs

TASK = {"name": "ti", "corpus": "c", "modalities": ["text", "image"], "pairing": "sample"}


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
    from cmcl.shards import write_shards

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


def test_shard_time_resolution_of_class_names(corpus, tmp_path):
    """What adapters unknown at start-up (paper layouts) get: names resolved when sharding."""
    task = {"name": "ti", "corpus": "c", "modalities": ["text", "image"],
            "classes": ["one", "two"]}
    shard_task(task, {"path": str(corpus)}, "test", tmp_path / "s")
    assert sorted(int(s["cls"]) for s in iter_samples(tmp_path / "s")) == [1, 1, 2, 2]
    for bad, why in ((["one", "cat"], "'cat' is not a class name"),
                     ([1, 42], "42 is outside the class list")):
        with pytest.raises(ValueError, match=rf"tasks\.ti\.classes: {why}"):
            shard_task(task | {"classes": bad}, {"path": str(corpus)}, "test", tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_missing_shard_named_in_sizes(tmp_path):
    from cmcl.shards import shard_urls

    write_json(tmp_path / "sizes.json", {"000000.tar": 3})
    with pytest.raises(FileNotFoundError, match="missing: \\['000000.tar'\\]"):
        shard_urls(tmp_path)


def _relabel(corpus, label_of) -> None:
    """Rewrite the manifest's labels: `label_of(row)` gives the new label, or ... to drop it."""
    rows = [json.loads(x) for x in (corpus / "manifest.jsonl").read_text().splitlines()]
    for r in rows:
        new = label_of(r)
        if new is ...:
            del r["label"]
        else:
            r["label"] = new
    (corpus / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("pairing", ["sample", "class"])
def test_a_partly_labelled_task_is_refused(corpus, tmp_path, pairing):
    """Unlabelled rows (label "" or absent) used to be scored as one more class (-1), and
    zero-shot accuracy was silently left out."""
    _relabel(corpus, lambda r: {"i00": "", "a00": "", "i01": ...}.get(r["id"], r["label"]))
    task = {"name": "ti", "corpus": "c", "modalities": ["text", "image"], "pairing": pairing}
    n, first = (8, "i10") if pairing == "sample" else (16, "a01")
    with pytest.raises(ValueError, match=rf"task 'ti': split 'test' of corpus 'c': "
                                         rf"{3 if pairing == 'class' else 2} of {n} samples "
                                         rf"have no label \(first: 'i00'\), "
                                         rf"{n - (3 if pairing == 'class' else 2)} have one "
                                         rf"\(first: '{first}'\); a task's samples must all be "
                                         "labelled or all unlabelled"):
        shard_task(task, {"path": str(corpus)}, "test", tmp_path / "s")
    assert not (tmp_path / "s").exists()
    # a task of named classes takes only labelled samples
    assert shard_task(task | {"classes": [1, 2]}, {"path": str(corpus)}, "test",
                      tmp_path / "k") == (4 if pairing == "sample" else 8)  # texts of 8 rows


@pytest.mark.parametrize("task, need", [
    ({"relevance": "label"}, "relevance 'label'"),
    ({"pairing": "class"}, "pairing 'class'"),
    ({"pairing": "class", "relevance": "instance"}, "pairing 'class'"),
])
def test_an_unlabelled_task_that_needs_labels_is_refused(corpus, tmp_path, task, need):
    """With no label column, every -1 counted as one class: untrained step 0 scored 100% mAP."""
    _relabel(corpus, lambda r: ...)
    task = TASK | task
    with pytest.raises(ValueError, match=rf"task 'ti': split 'train' of corpus 'c': {need} "
                                         r"needs a label on every sample, but none of its \d+ "
                                         r"samples has one \(first: 'i02'\)"):
        shard_task(task, {"path": str(corpus)}, "train", tmp_path / "s")
    assert not (tmp_path / "s").exists()
    assert shard_task(TASK, {"path": str(corpus)}, "train", tmp_path / "ok") == 16  # instance
    assert not any("cls" in s for s in iter_samples(tmp_path / "ok"))


def test_a_task_class_without_pairs_is_refused(corpus, tmp_path):
    """corpus.json's class 'never seen' has no sample: a task [zero, never seen] used to shard
    pairs of one class (mAP 100% at step 0, zero-shot against a phantom class)."""
    meta = json.loads((corpus / "corpus.json").read_text())
    (corpus / "corpus.json").write_text(json.dumps(
        meta | {"classes": [*meta["classes"], "never seen"]}))
    corp = {"path": str(corpus)}
    task = TASK | {"classes": ["zero", "never seen"]}
    with pytest.raises(ValueError, match=r"task 'ti': split 'test' of corpus 'c': the task's "
                                         r"class\(es\) 4 \('never seen'\) have no sample with "
                                         r"both \['text', 'image'\] in this split"):
        shard_task(task, corp, "test", tmp_path / "s")
    assert not (tmp_path / "s").exists()
    # class pairing: class 'one' without audio in train has images but no pair
    rows = [json.loads(x) for x in (corpus / "manifest.jsonl").read_text().splitlines()]
    rows = [r for r in rows if not (r["id"].startswith("a1") and r["split"] == "train")]
    (corpus / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ia = {"name": "ia", "corpus": "c", "modalities": ["image", "audio"], "pairing": "class"}
    with pytest.raises(ValueError, match=r"split 'train' .* class\(es\) 1 \('one'\) have no "
                                         r"sample with both \['image', 'audio'\]"):
        shard_task(ia | {"classes": [0, 1]}, corp, "train", tmp_path / "c")
    assert shard_task(ia | {"classes": [0, 1]}, corp, "test", tmp_path / "t") == 4
    # a cap on pairs per class never empties a class; all-class tasks are not checked
    assert shard_task(TASK | {"classes": [0, 3]}, corp, "test", tmp_path / "m",
                      max_per_class=1) == 2
    assert shard_task(TASK, corp, "test", tmp_path / "all") == 8
