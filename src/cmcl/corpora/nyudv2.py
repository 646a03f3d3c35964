"""NYU Depth v2 RGB-depth pairs (task 3 of the paper: vision-depth), from an exported folder."""

from __future__ import annotations

import io
from pathlib import Path

from cmcl.corpora import CorpusInfo, Sample, register_adapter
from cmcl.corpora.media import IMAGE_EXT, Reader, stream, take_options

DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I"})


@register_adapter("nyudv2")
def nyudv2(name: str, path: Path, **options):
    """NYUDv2 labelled subset (1,449 RGB-D frames, official 795/654 split) as image files.

    Layout (corpus folder, e.g. data/raw/nyudv2)::

        {train,test}/rgb/<id>.png      (or .jpg) 8-bit RGB
        {train,test}/depth/<id>.png    16-bit single channel (millimetres)

    Obtain: https://cs.nyu.edu/~fergus/datasets/nyu_depth_v2.html -> nyu_depth_v2_labeled.mat
    (a MATLAB v7.3 = HDF5 file) and the official split file splits.mat (trainNdxs/testNdxs),
    then export once (needs h5py, scipy, Pillow)::

        import h5py, numpy as np, scipy.io
        from pathlib import Path
        from PIL import Image
        mat = h5py.File("nyu_depth_v2_labeled.mat", "r")
        idx = scipy.io.loadmat("splits.mat")
        for split, key in (("train", "trainNdxs"), ("test", "testNdxs")):
            for sub in ("rgb", "depth"):
                Path(f"data/raw/nyudv2/{split}/{sub}").mkdir(parents=True, exist_ok=True)
            for i in idx[key].ravel() - 1:                       # 1-based in MATLAB
                rgb = mat["images"][i].transpose(2, 1, 0)        # (3, W, H) -> (H, W, 3)
                mm = np.round(mat["depths"][i].T * 1000).astype(np.uint16)  # metres -> mm
                Image.fromarray(rgb).save(f"data/raw/nyudv2/{split}/rgb/{i:04d}.png")
                Image.fromarray(mm).save(f"data/raw/nyudv2/{split}/depth/{i:04d}.png")

    Options: `verify` (also checks that depth PNGs are 16-bit), `on_error`.
    Sample: id = file stem, no label, modalities image (RGB bytes) and depth (PNG bytes).
    Every RGB file needs its depth partner: a missing one is an error.
    """
    opts = take_options(name, "nyudv2", options)
    splits = [s for s in ("train", "test") if (path / s / "rgb").is_dir()]
    if not splits:
        raise FileNotFoundError(f"corpus '{name}': no {path}/train/rgb or {path}/test/rgb folder")
    rows = [(s, f) for s in splits for f in sorted((path / s / "rgb").iterdir())
            if f.suffix.lstrip(".").lower() in IMAGE_EXT]
    reader = Reader(name, path, opts["verify"])

    def build(row) -> Sample:
        split, rgb = row
        sid = rgb.stem
        s = Sample(sid, split, None)
        s.data["image"] = reader.read(sid, "image", rgb.relative_to(path))
        depth = Path(split) / "depth" / f"{sid}.png"
        s.data["depth"] = reader.read(sid, "depth", depth)
        if opts["verify"]:
            from PIL import Image

            with Image.open(io.BytesIO(s.data["depth"][1])) as img:
                if img.mode not in DEPTH_MODES:
                    raise reader.error(sid, f"depth file {path / depth} is not a 16-bit "
                                       f"single-channel PNG (mode {img.mode})")
        return s

    return CorpusInfo(name, {"image": "file", "depth": "file"}), \
        stream(rows, build, opts["on_error"], lambda row: row[0],
               lambda row: row[1].stem, f"corpus '{name}'")
