"""Clotho audio captioning (task 4 of the paper: text-audio instance retrieval)."""

from __future__ import annotations

import csv
from pathlib import Path

from cmcl.corpora import CorpusInfo, Sample, register_adapter
from cmcl.corpora.media import Reader, stream, take_options

PARTS = {"development": "train", "validation": "val", "evaluation": "test"}
CAPTIONS = ("caption_1", "caption_2", "caption_3", "caption_4", "caption_5")


@register_adapter("clotho", options={"caption": 1})
def clotho(name: str, path: Path, **options):
    """Clotho (v1 or v2.x): 15-30 s clips, five captions each, no classes.

    Layout (corpus folder, e.g. data/raw/clotho)::

        clotho_audio_{development,validation,evaluation}/<file_name>.wav
            (or {development,validation,evaluation}/, as the 7z archives unpack)
        clotho_captions_{development,validation,evaluation}.csv
            header: file_name,caption_1,caption_2,caption_3,caption_4,caption_5

    Obtain: Zenodo, https://zenodo.org/records/3490684 (v1, development + evaluation) or
    https://zenodo.org/records/4783391 (v2.1, adds validation); unpack the 7z archives into the
    corpus folder. development -> split "train", validation -> "val", evaluation -> "test";
    parts whose captions CSV is absent are skipped.

    Options: `caption` 1..5 (one sample per clip with that caption; default 1, as the DNS
    authors) or "all" (one sample per clip and caption, id `<stem>#<k>`: more training pairs,
    but five copies of each clip make instance retrieval on that split ambiguous), `verify`,
    `on_error`. Sample: id = file stem, no label, modalities audio (.wav bytes) and text.
    """
    opts = take_options(name, "clotho", options)
    cap = opts["caption"]
    if cap != "all" and cap not in (1, 2, 3, 4, 5):
        raise ValueError(f"corpus '{name}': option caption must be 1..5 or 'all', not {cap!r}")
    rows = []
    for part, split in PARTS.items():
        meta = path / f"clotho_captions_{part}.csv"
        if not meta.is_file():
            continue
        folder = f"clotho_audio_{part}"
        if not (path / folder).is_dir() and (path / part).is_dir():
            folder = part
        with open(meta, newline="", encoding="utf-8-sig") as f:
            table = list(csv.DictReader(f))
        missing = {"file_name", *CAPTIONS} - set(table[0] if table else {})
        if missing:
            raise ValueError(f"corpus '{name}': {meta} lacks the column(s) {sorted(missing)}")
        rows += [(split, folder, r) for r in table]
    if not rows:
        raise FileNotFoundError(f"corpus '{name}': no clotho_captions_<part>.csv with rows in "
                                f"{path} (parts: {sorted(PARTS)})")
    reader = Reader(name, path, opts["verify"])

    def samples():
        for split, folder, r in rows:
            stem = Path(r["file_name"]).stem
            ks = range(1, 6) if cap == "all" else [cap]
            for k in ks:
                text = (r.get(f"caption_{k}") or "").strip()
                if cap == "all" and not text:
                    continue
                yield split, folder, r["file_name"], stem if cap != "all" else f"{stem}#{k}", text

    def build(row) -> Sample:
        split, folder, file_name, sid, text = row
        s = Sample(sid, split, None)
        s.data["audio"] = reader.read(sid, "audio", Path(folder) / file_name)
        if text:
            s.data["text"] = ("txt", text)
        return s

    return CorpusInfo(name, {"audio": "file", "text": "inline"}), \
        stream(samples, build, opts["on_error"], lambda row: row[0],
               lambda row: Path(row[2]).stem, f"corpus '{name}'")
