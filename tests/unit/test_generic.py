"""The generic corpus layout (manifest.jsonl or .csv, corpus.json): every row read, missing and
escaping files, ids unique and exact strings in one split, labels by index or class name,
non-UTF-8 manifests."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cmcl.corpora import open_corpus
from cmcl.shards import iter_samples, shard_task


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


def test_non_utf8_manifest_names_file_and_line(tmp_path):
    from cmcl.corpora.generic import read_rows

    f = tmp_path / "manifest.jsonl"
    f.write_bytes(b'{"id": "a", "split": "train", "text": "ok"}\n'
                  b'{"id": "b", "split": "train", "text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=rf"{f}:2: not UTF-8 text \(byte 0xe9 at column 43\); "
                                         "save the manifest as UTF-8"):
        read_rows(f)
    c = tmp_path / "manifest.csv"
    c.write_bytes(b"id,split,text\na,train,ok\nb,train,caf\xe9\n")
    with pytest.raises(ValueError, match=rf"{c}:3: not UTF-8 text \(byte 0xe9 at column 12\)"):
        read_rows(c)


def test_a_task_reads_and_verifies_only_its_own_modalities(tmp_path):
    """A cut image stops the tasks that use images, not a text-audio task of the same rows
    (which used to fail, or with on_error: skip lose those rows)."""
    from helpers.data import make_corpus

    from cmcl.shards import shard_task

    corpus = make_corpus(tmp_path / "c")
    png = corpus / "img/1_3.png"
    png.write_bytes(png.read_bytes()[:40])
    audio = {"name": "ta", "corpus": "c", "modalities": ["text", "audio"]}
    image = {"name": "ti", "corpus": "c", "modalities": ["text", "image"]}
    assert shard_task(audio, {"path": str(corpus)}, "train", tmp_path / "a") == 16
    with pytest.raises(ValueError, match=r"sample 'i13': image file .*img/1_3.png is unreadable"):
        shard_task(image, {"path": str(corpus)}, "train", tmp_path / "i")
    kept = shard_task(image, {"path": str(corpus), "options": {"on_error": "skip"}}, "train",
                      tmp_path / "s")
    assert kept == 15


@pytest.mark.parametrize("csv_file", [False, True])
def test_split_values_other_than_train_and_test_are_refused(corpus, tmp_path, csv_file):
    """Rows of split "Train" or "val" used to be dropped from every task, 0 rejected."""
    rows = _rows(corpus)
    rows[0]["split"], rows[5]["split"] = "Train", "val"
    if csv_file:
        rows[7]["split"] = ""
        f = _to_csv(corpus, rows)
        where = (r"line 2 \(id 'i00'\): split 'Train', line 7 \(id 'a02'\): split 'val', "
                 r"line 9 \(id 'a03'\): split ''")
    else:
        del rows[7]["split"]
        _write(corpus, rows)
        f = corpus / "manifest.jsonl"
        where = (r"line 1 \(id 'i00'\): split 'Train', line 6 \(id 'a02'\): split 'val', "
                 r"line 8 \(id 'a03'\): split None")
    with pytest.raises(ValueError, match=rf"{f}: 3 row\(s\) have a split that is not one of "
                                         rf"\['train', 'test'\] \(exactly, case included\): "
                                         rf"{where}$"):
        shard_task(TASK, {"path": str(corpus)}, "train", tmp_path / "s")
    assert not (tmp_path / "s").exists()
    _write(corpus, [{k: v for k, v in r.items() if k != "split"} for r in rows])
    with pytest.raises(ValueError, match="lacks the column 'split'"):
        open_corpus("c", corpus)


def test_modalities_are_the_columns_of_every_row(corpus, tmp_path):
    """Without corpus.json, row 1 (an image row, no `audio` key) used to fix the modalities:
    'corpus has no modality audio'. A row without a key lacks that modality, as an empty cell."""
    (corpus / "corpus.json").unlink()
    info, _ = open_corpus("c", corpus)
    assert info.modalities == {"image": "file", "text": "inline", "audio": "file"}
    audio = {"name": "ta", "corpus": "c", "modalities": ["text", "audio"]}
    assert shard_task(audio, {"path": str(corpus)}, "train", tmp_path / "a") == 16
    assert {json.loads(s["json"])["id"][0] for s in iter_samples(tmp_path / "a")} == {"a"}


@pytest.mark.parametrize("declared, written", [("NFD", "NFC"), ("NFC", "NFD")])
def test_class_names_and_labels_compare_in_nfc(corpus, tmp_path, declared, written):
    """A decomposed ü in corpus.json and a composed one in the manifest (or params) used to be
    'label 'grüne Welle' is not a class name of [... 'grüne Welle' ...]'."""
    import unicodedata

    def form(f: str) -> str:
        return unicodedata.normalize(f, "grüne Welle")

    meta = json.loads((corpus / "corpus.json").read_text())
    (corpus / "corpus.json").write_text(json.dumps(
        meta | {"classes": ["zero", "one", form(declared), "three"]}))
    rows = _rows(corpus)
    for r in rows:
        if r["label"] == 2:
            r["label"] = form(written)
    _write(corpus, rows)
    info, samples = open_corpus("c", corpus)
    assert info.classes[2] == form("NFC")  # stored composed
    assert {s.label for s in samples("test") if s.id.startswith("i2")} == {2}
    task = TASK | {"classes": [form(written), "one"]}
    assert shard_task(task, {"path": str(corpus)}, "test", tmp_path / "s") == 4
    assert json.loads((tmp_path / "s/meta.json").read_text())["classes"][2] == form("NFC")


def test_unreadable_image_names_no_python_object(corpus):
    """PIL's 'cannot identify image file <_io.BytesIO object at 0x7f…>' leaked into the error."""
    from cmcl.encoders.payloads import read_image

    (corpus / "img/0_0.png").write_bytes(b"not an image at all")
    _, samples = open_corpus("c", corpus)
    with pytest.raises(ValueError) as e:
        list(samples("test"))
    assert str(e.value).endswith("0_0.png is unreadable (cannot identify image file)")
    with pytest.raises(ValueError) as e:
        read_image(b"GIF89a" + bytes(30), "s.tar:k.image.gif", "pixels", "L")
    assert "object at 0x" not in str(e.value) and "unreadable image (" in str(e.value)
