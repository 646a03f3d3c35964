"""UCF101 action videos (task 1 of the paper: text-video), read from the official release."""

from __future__ import annotations

from pathlib import Path

from cmcl.corpora import CorpusInfo, Sample, register_adapter
from cmcl.corpora.media import Reader, need, readable, stream, take_options

TEMPLATES = ["{}", "a video of a person {}.", "a demonstration of a person {}."]


@register_adapter("ucf101", options={"split": 1})
def ucf101(name: str, path: Path, **options):
    """UCF101 in its official layout; one of the three official train/test splits.

    Layout (corpus folder, e.g. data/raw/ucf101)::

        UCF-101/<Class>/v_<Class>_gXX_cYY.avi            (UCF101.rar, unpacked)
        ucfTrainTestlist/classInd.txt                     "1 ApplyEyeMakeup" per line
        ucfTrainTestlist/trainlist0N.txt                  "<Class>/v_..._gXX_cYY.avi 1"
        ucfTrainTestlist/testlist0N.txt                   "<Class>/v_..._gXX_cYY.avi"

    Obtain: https://www.crcv.ucf.edu/data/UCF101.php -> UCF101.rar and
    UCF101TrainTestSplits-RecognitionTask.zip; unpack both into the corpus folder (the adapter
    never opens archives). Samples are the videos named by the chosen split's lists, so a
    listed file that is missing is an error, and videos not listed are ignored.

    Options: `split` 1|2|3 (official split, default 1), `verify` (default true: demux each
    video and decode its first frame and last GOP, so a corrupt or cut one is named; false
    copies the bytes unread), `on_error` raise|skip.
    Sample: id = video stem, label = class index (classInd order, 0-based), modalities
    video (.avi bytes) and text (the class name, e.g. "apply eye makeup", as the DNS authors'
    text side). Class names are the folder names made readable; prompts use TEMPLATES.
    """
    opts = take_options(name, "ucf101", options)
    if opts["split"] not in (1, 2, 3):
        raise ValueError(f"corpus '{name}': option split must be 1, 2 or 3 (official UCF101 "
                         f"splits), not {opts['split']!r}")
    lists = path / "ucfTrainTestlist"
    folders: list[str] = []
    for i, line in enumerate(need(name, lists / "classInd.txt").read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] != str(len(folders) + 1):
            raise ValueError(f"corpus '{name}': {lists / 'classInd.txt'}:{i}: expected "
                             f"'{len(folders) + 1} <Class>', got {line.strip()!r}")
        folders.append(parts[1])
    index = {c: k for k, c in enumerate(folders)}
    rows = []
    for split in ("train", "test"):
        f = need(name, lists / f"{split}list0{opts['split']}.txt")
        rows += [(split, f, line.split()) for line in f.read_text().splitlines() if line.strip()]
    info = CorpusInfo(name, {"video": "file", "text": "inline"},
                      [readable(c) for c in folders], TEMPLATES)
    reader = Reader(name, path, opts["verify"])

    def build(row) -> Sample:
        split, listfile, parts = row
        rel = parts[0].replace("\\", "/")
        sid = Path(rel).stem
        folder = rel.split("/")[0]
        if folder not in index:
            raise reader.error(sid, f"label {folder!r} (from {listfile}) not in the class list "
                               f"{reader.root / 'ucfTrainTestlist/classInd.txt'}")
        label = index[folder]
        if len(parts) > 1 and parts[1] != str(label + 1):
            raise reader.error(sid, f"{listfile} gives class {parts[1]} but the folder "
                               f"{folder!r} is class {label + 1} in classInd.txt")
        s = Sample(sid, split, label)
        s.data["video"] = reader.read(sid, "video", Path("UCF-101") / rel)
        s.data["text"] = ("txt", TEMPLATES[0].format(info.classes[label]))
        return s

    return info, stream(rows, build, opts["on_error"], lambda row: row[0],
                        lambda row: Path(row[2][0].replace("\\", "/")).stem,
                        f"corpus '{name}' (split lists)")
