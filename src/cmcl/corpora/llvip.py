"""LLVIP visible-infrared pairs (task 11 of the paper: vision-thermal)."""

from __future__ import annotations

from pathlib import Path

from cmcl.corpora import CorpusInfo, Sample, register_adapter
from cmcl.corpora.media import IMAGE_EXT, Reader, stream, take_options


@register_adapter("llvip")
def llvip(name: str, path: Path, **options):
    """LLVIP: 15,488 aligned visible/infrared street images taken at night.

    Layout (corpus folder, e.g. data/raw/llvip; a single `LLVIP/` level above is accepted,
    as the release archive unpacks)::

        visible/{train,test}/<id>.jpg
        infrared/{train,test}/<id>.jpg

    Obtain: https://github.com/bupt-ai-cz/LLVIP (download_dataset.md: LLVIP.zip; unpack it,
    the Annotations folder is not used).

    Options: `verify`, `on_error`. Sample: id = file stem, no label, modalities image
    (visible) and thermal (infrared). Every visible image needs its infrared partner with the
    same name: a missing one is an error.
    """
    opts = take_options(name, "llvip", options)
    if not (path / "visible").is_dir() and (path / "LLVIP" / "visible").is_dir():
        path = path / "LLVIP"
    splits = [s for s in ("train", "test") if (path / "visible" / s).is_dir()]
    if not splits:
        raise FileNotFoundError(f"corpus '{name}': no {path}/visible/train or "
                                f"{path}/visible/test folder")
    rows = [(s, f.name) for s in splits for f in sorted((path / "visible" / s).iterdir())
            if f.suffix.lstrip(".").lower() in IMAGE_EXT]
    reader = Reader(name, path, opts["verify"])

    def build(row) -> Sample:
        split, file = row
        sid = Path(file).stem
        s = Sample(sid, split, None)
        s.data["image"] = reader.read(sid, "image", Path("visible") / split / file)
        s.data["thermal"] = reader.read(sid, "thermal", Path("infrared") / split / file)
        return s

    return CorpusInfo(name, {"image": "file", "thermal": "file"}), \
        stream(rows, build, opts["on_error"], lambda row: row[0],
               lambda row: Path(row[1]).stem, f"corpus '{name}'")
