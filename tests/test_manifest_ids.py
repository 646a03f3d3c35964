"""Sample ids and labels of a corpus: unique, exact strings, one split each; labels by index
or class name; and shard tars that never merge two samples or hide a truncation."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cmcl.corpora import open_corpus
from cmcl.shards import iter_samples, shard_task, write_shards

TASK = {"name": "ti", "corpus": "c", "modalities": ["text", "image"]}


def _rows(corpus: Path) -> list[dict]:
    return [json.loads(x) for x in (corpus / "manifest.jsonl").read_text().splitlines()]


def _write(corpus: Path, rows: list[dict]) -> None:
    (corpus / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _to_csv(corpus: Path, rows: list[dict]) -> Path:
    (corpus / "manifest.jsonl").unlink(missing_ok=True)
    cols = ["id", "split", "label", "image", "audio", "text"]
    with open(corpus / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows({c: r.get(c, "") for c in cols} for r in rows)
    return corpus / "manifest.csv"


@pytest.mark.parametrize("new_id, match", [
    ("i00", r"manifest\.jsonl: line 1 and line 3 have the same id 'i00' \(split 'test'\)"),
    ("i0.0", None),
])
def test_duplicate_ids_name_both_rows_and_the_manifest(corpus, tmp_path, new_id, match):
    """An exact duplicate, or ids equal once tar-safe (`i0.0`, `i0_0`), used to become two
    tar records with one key that the reader merged into one sample."""
    rows = _rows(corpus)
    if match is None:  # i0_0 and i0.0 collide as the tar key i0_0
        rows[0]["id"], new_id = "i0_0", "i0.0"
        match = (r"manifest\.jsonl: line 1 \(id 'i0_0'\) and line 3 \(id 'i0\.0'\) collide "
                 r"as the tar key 'i0_0' in split 'test'")
    rows[2]["id"] = new_id  # rows 0 and 2: both test-split images of class 0
    _write(corpus, rows)
    with pytest.raises(ValueError, match=match):
        shard_task(TASK, {"path": str(corpus)}, "test", tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_csv_ids_are_exact_strings(corpus, tmp_path):
    """CSV cells are text: ids 004 and 4 are two samples (type inference made both 4)."""
    rows = _rows(corpus)
    rows[0]["id"], rows[2]["id"] = "004", "4"
    f = _to_csv(corpus, rows)
    shard_task(TASK, {"path": str(corpus)}, "test", tmp_path / "s")
    got = {json.loads(s["json"])["id"] for s in iter_samples(tmp_path / "s")}
    assert {"004", "4"} <= got and len(got) == 8
    rows[2]["id"] = "004"
    _to_csv(corpus, rows)
    with pytest.raises(ValueError, match=rf"{f}: line 2 and line 4 have the same id '004'"):
        open_corpus("c", corpus)


def test_write_shards_refuses_one_key_twice(tmp_path):
    """The writer every adapter's samples go through: a duplicate id (paper adapters too)."""
    def rec(key: str, sid: str) -> dict:
        return {"__key__": key, "json": {"id": sid}, "x.txt": sid}

    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match=r"where: sample id 'v1' appears twice"):
        write_shards(tmp_path / "a", [rec("v1", "v1"), rec("v1", "v1")], 10, where="where")
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match=r"sample ids 'x\.1' and 'x_1' collide as the tar key "
                                         r"'x_1'"):
        write_shards(tmp_path / "b", [rec("x_1", "x.1"), rec("x_1", "x_1")], 10)


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


def test_train_test_overlap_is_refused(corpus, tmp_path):
    rows = _rows(corpus)
    rows[4]["id"] = rows[0]["id"]  # i00 (test) reused by a train row
    rows[5]["id"] = rows[1]["id"]  # a00 (test) too
    _write(corpus, rows)
    for split in ("train", "test"):
        with pytest.raises(ValueError, match=r"manifest\.jsonl: 2 sample id\(s\) are in more "
                                             r"than one split \(train/test overlap\), e\.g\. "
                                             r"'i00' \(test and train\), 'a00'"):
            shard_task(TASK, {"path": str(corpus)}, split, tmp_path / split)


def test_features_h5_train_test_overlap_is_refused(tmp_path):
    h5py = pytest.importorskip("h5py")
    from cmcl.corpora.features_h5 import import_task

    root = tmp_path / "esc"
    root.mkdir()
    for split, ids in (("train", ["a", "b", "c"]), ("test", ["c", "tensor(a)", "d"])):
        with h5py.File(root / f"esc_{split}_lb.h5", "w") as f:
            for sid in ids:
                f.create_dataset(sid, data=np.zeros((2, 4), np.float32))
    corpus = {"path": str(root), "adapter": "features_h5",
              "options": {"encoder": "lb", "modalities": ["text", "audio"]}}
    task = {"name": "ta", "corpus": "esc", "modalities": ["text", "audio"]}
    match = (r"2 sample id\(s\) are in more than one split \(train/test overlap\), "
             r"e\.g\. 'c' \(train and test\), 'a'")
    with pytest.raises(ValueError, match=match):
        import_task(task, corpus, "train", tmp_path / "f")
    with pytest.raises(ValueError, match=match):
        open_corpus("esc", root, "features_h5", corpus["options"])
    assert not (tmp_path / "f").exists()


def _label_corpus(corpus: Path, label, csv_file: bool = False) -> Path:
    rows = _rows(corpus)
    rows[0]["label"] = label
    if csv_file:
        return _to_csv(corpus, rows)
    _write(corpus, rows)
    return corpus / "manifest.jsonl"


@pytest.mark.parametrize("label, want", [
    (2, 2), (2.0, 2), ("two", 2), ("3", 3), ("", None), (None, None)])
def test_labels_are_indices_or_class_names(corpus, label, want):
    _label_corpus(corpus, label)
    _, samples = open_corpus("c", corpus)
    assert next(iter(samples("test"))).label == want


def test_label_string_is_a_class_name_before_an_index(corpus):
    """Name first: with classes ["zero", "2", ...], the label "2" is class "2" (index 1)."""
    meta = json.loads((corpus / "corpus.json").read_text())
    (corpus / "corpus.json").write_text(json.dumps(meta | {"classes": ["zero", "2", "x", "y"]}))
    _label_corpus(corpus, "2", csv_file=True)
    _, samples = open_corpus("c", corpus)
    got = list(samples("test"))
    assert got[0].label == 1 and got[1].label == 0  # CSV label "0": not a name, index 0


@pytest.mark.parametrize("label, why", [
    (1.9, r"label 1\.9 is not integral"),
    (True, r"label True \(bool\) is not"),
    ("true", r"label 'true' is not a class name of \['zero', 'one', 'two', 'three'\] or an "
             r"index 0\.\.3"),
    ("1.9", r"label '1\.9' is not a class name"),
    ("cat", r"label 'cat' is not a class name"),
    ("7", r"label 7 not in the class list \(0\.\.3"),
])
@pytest.mark.parametrize("csv_file", [False, True])
def test_bad_labels_name_file_sample_and_allowed_names(corpus, tmp_path, label, why, csv_file):
    """1.9 and true used to become class 1; a CSV cell is text, so 1.9/True arrive as strings."""
    if csv_file and not isinstance(label, str):
        label, why = str(label), rf"label '{label}' is not a class name"
    f = _label_corpus(corpus, label, csv_file)
    with pytest.raises(ValueError, match=rf"{f}: sample 'i00': {why}"):
        shard_task(TASK, {"path": str(corpus)}, "test", tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_label_names_need_a_class_list(corpus):
    meta = json.loads((corpus / "corpus.json").read_text())
    del meta["classes"]
    (corpus / "corpus.json").write_text(json.dumps(meta))
    _label_corpus(corpus, "two")
    _, samples = open_corpus("c", corpus)
    with pytest.raises(ValueError, match=r"sample 'i00': label 'two' is not an integer class "
                                         r"index \(corpus\.json declares no `classes`"):
        list(samples("test"))


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
