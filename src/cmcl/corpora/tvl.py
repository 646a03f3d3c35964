"""Touch-Vision-Language (tasks 8-10 of the paper: vision-tactile, text-tactile, vision-text)."""

from __future__ import annotations

import csv
from pathlib import Path

from cmcl.corpora import CorpusInfo, Sample, register_adapter
from cmcl.corpora.media import Reader, stream, take_options

SUBSETS = ["ssvtp", "hct/data1", "hct/data2", "hct/data3"]


def _read_csv(name: str, f: Path) -> list[dict]:
    with open(f, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not ({"url", "vision"} & set(rows[0]) and "caption" in rows[0]):
        raise ValueError(f"corpus '{name}': {f} needs the columns url (or vision) and caption")
    return rows


def _one_csv(name: str, path: Path) -> list[tuple]:
    """tvl.csv: vision|url, tactile, caption, split[, id]; paths relative to the corpus folder."""
    rows = _read_csv(name, path / "tvl.csv")
    if rows and "split" not in rows[0]:
        raise ValueError(f"corpus '{name}': {path / 'tvl.csv'} lacks the column 'split'")
    return [(r.get("id") or f"tvl_{i}", r["split"].strip(), Path("."), r)
            for i, r in enumerate(rows)]


def _release(name: str, path: Path, subsets: list[str]) -> list[tuple]:
    """The released tree: <subset>/{train,test}.csv with url, tactile, caption per row."""
    out = []
    for sub in subsets:
        for split in ("train", "test"):
            f = path / sub / f"{split}.csv"
            if f.is_file():
                tag = sub.replace("/", "_")
                out += [(f"{tag}_{split}_{i}", split, Path(sub), r)
                        for i, r in enumerate(_read_csv(name, f))]
    if not out:
        raise FileNotFoundError(f"corpus '{name}': neither {path / 'tvl.csv'} nor any "
                                f"<subset>/{{train,test}}.csv for subsets {subsets}")
    return out


@register_adapter("tvl", options={"subsets": SUBSETS})
def tvl(name: str, path: Path, **options):
    """TVL: paired camera image, tactile (GelSight/DIGIT) image and a touch caption.

    Two layouts (corpus folder, e.g. data/raw/tvl):

    1. one table, for any export::

           tvl.csv      vision,tactile,caption,split[,id]   (`url` is accepted for `vision`)
           <the image files, paths relative to the corpus folder>

    2. the released tree (https://huggingface.co/datasets/mlfu7/Touch-Vision-Language-Dataset,
       folder tvl_dataset/; put its content in the corpus folder)::

           ssvtp/{train,test}.csv, hct/data{1,2,3}/{train,test}.csv   url,tactile,caption
           (paths relative to each subset folder; where a csv has no `tactile` column, as
           ssvtp/test.csv, the tactile path is the vision path with "rgb" -> "tac", as the
           DNS authors read it)

    Options: `subsets` (layout 2; default all four), `verify`, `on_error`.
    Sample: id = `id` column or `tvl_<row>` (layout 1), `<subset>_<split>_<row>` (layout 2);
    no label (instance retrieval); modalities image (vision), tactile (image bytes) and text
    (the caption, whitespace-trimmed; an empty caption means the sample has no text).
    """
    opts = take_options(name, "tvl", options)
    single = (path / "tvl.csv").is_file()
    rows = _one_csv(name, path) if single else _release(name, path, list(opts["subsets"]))
    reader = Reader(name, path, opts["verify"])

    def build(row) -> Sample:
        sid, split, base, r = row
        vision = (r.get("vision") or r.get("url") or "").strip()
        tactile = (r.get("tactile") or "").strip() or vision.replace("rgb", "tac")
        if not vision:
            raise reader.error(sid, "the row names no vision image")
        s = Sample(str(sid), split, None)
        s.data["image"] = reader.read(sid, "image", base / vision)
        s.data["tactile"] = reader.read(sid, "tactile", base / tactile)
        caption = " ".join((r.get("caption") or "").split())
        if caption:
            s.data["text"] = ("txt", caption)
        return s

    return CorpusInfo(name, {"image": "file", "tactile": "file", "text": "inline"}), \
        stream(rows, build, opts["on_error"], lambda row: row[1], _vision_file,
               f"corpus '{name}' (ids here: the vision image each row names)")


def _vision_file(row) -> str:
    """Row ids are positions, so a leak between splits shows as one image named twice."""
    _, _, base, r = row
    return (Path(base) / (r.get("vision") or r.get("url") or "").strip()).as_posix()
