"""Large frozen encoders from Hugging Face checkpoints in a local folder (never the network).

Specs (params `embed.encoders.<modality>`):
- `hf-clip:/models/clip-vit-b32`: a CLIP checkpoint (`CLIPModel`): text goes through the text
  tower, image-file modalities (image, depth, thermal, tactile) through the vision tower; both
  give the projected embedding (`projection_dim`).
- `hf:/models/all-mpnet-base-v2`: any `AutoModel` text encoder, attention-mask mean-pooled
  last hidden state (what sentence-transformers does for most of its models).

The folder is what `save_pretrained` writes (or a downloaded snapshot): config.json, weights as
model.safetensors (pickled pytorch_model.bin is refused: checkpoints are data, not code), the
tokenizer files, and for CLIP images preprocessor_config.json. Runs on CUDA when available,
in batches, without gradients. One load serves both CLIP towers.
"""

from __future__ import annotations

import functools
import io
import json
import os
from pathlib import Path

import numpy as np

from cmcl.encoders import Encoder, register_encoder

IMAGE_LIKE = frozenset({"image", "depth", "thermal", "tactile"})
EXPECTED = ("a local folder as written by save_pretrained: config.json, model.safetensors, the "
            "tokenizer files (tokenizer.json or vocab files){}")


def _check_folder(spec: str, path: str, kinds: tuple[str, ...], images: bool) -> Path:
    """Fail early, naming the spec, the path and what was expected, instead of a deep traceback."""
    expected = EXPECTED.format(", preprocessor_config.json" if images else "")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"encoder '{spec}': {p} does not exist; expected {expected}")
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"encoder '{spec}': {p} has no config.json; expected {expected}")
    try:
        kind = json.loads((p / "config.json").read_text()).get("model_type")
    except json.JSONDecodeError as e:
        raise ValueError(f"encoder '{spec}': {p / 'config.json'} is not valid JSON ({e})") from None
    if kinds and kind not in kinds:
        raise ValueError(f"encoder '{spec}': {p} holds a '{kind}' model, expected {list(kinds)}")
    if not any(p.glob("*.safetensors")):
        bins = [f.name for f in p.glob("*.bin")]
        extra = f" (found only pickled {bins}: convert them to safetensors)" if bins else ""
        raise FileNotFoundError(f"encoder '{spec}': {p} has no model.safetensors{extra}; "
                                f"expected {expected}")
    return p


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=4)
def _load(spec: str, path: Path, kind: str) -> tuple:
    """(model, tokenizer, image processor or None), loaded once per folder."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers as tf

    opts = {"local_files_only": True}
    try:
        if kind == "clip":
            model = tf.CLIPModel.from_pretrained(path, use_safetensors=True, **opts)
            images = tf.AutoImageProcessor.from_pretrained(path, **opts) \
                if (path / "preprocessor_config.json").is_file() else None
        else:
            model, images = tf.AutoModel.from_pretrained(path, use_safetensors=True, **opts), None
        tokenizer = tf.AutoTokenizer.from_pretrained(path, **opts)
    except Exception as e:  # transformers, tokenizers and safetensors raise their own types
        raise ValueError(f"encoder '{spec}': cannot load the checkpoint in {path} "
                         f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return model.eval().to(_device()), tokenizer, images


class _HF(Encoder):
    modality, dim = "*", 0
    batch = 64  # encoder forward batch: bounded activation memory for large towers

    def _texts(self, payloads, where):
        import torch

        texts = [p.decode() if isinstance(p, bytes) else str(p) for p in payloads]
        out = []
        for i in range(0, len(texts), self.batch):
            tok = self.tokenizer(texts[i:i + self.batch], padding=True, truncation=True,
                                 return_tensors="pt").to(self.model.device)
            with torch.inference_mode():
                out.append(self._text_batch(tok).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)


@register_encoder("hf-clip")
class HFClip(_HF):
    """CLIP text and vision towers (see module docstring); the modality picks the tower."""

    takes_path = True

    def __init__(self, spec: str, path: str, modality: str | None = None) -> None:
        if modality is not None and modality != "text" and modality not in IMAGE_LIKE:
            raise ValueError(f"encoder '{spec}': CLIP encodes text and image files "
                             f"({sorted(IMAGE_LIKE)}), not '{modality}'")
        images = modality is None or modality in IMAGE_LIKE
        folder = _check_folder(spec, path, ("clip",), images)
        self.spec, self.modality = spec, modality or "*"
        self.model, self.tokenizer, self.images = _load(spec, folder, "clip")
        if images and modality is not None and self.images is None:
            raise FileNotFoundError(f"encoder '{spec}': {folder} has no "
                                    "preprocessor_config.json (needed for images)")
        self.dim = int(self.model.config.projection_dim)

    def _text_batch(self, tok):
        return _pooled(self.model.get_text_features(**tok))

    def encode(self, payloads, where):
        if self.modality == "text" or (self.modality == "*" and isinstance(payloads[0], str)):
            return self._texts(payloads, where)
        import torch
        from PIL import Image, UnidentifiedImageError

        out = []
        for i in range(0, len(payloads), self.batch):
            imgs = []
            for p, w in zip(payloads[i:i + self.batch], where[i:i + self.batch], strict=True):
                try:
                    imgs.append(Image.open(io.BytesIO(p)).convert("RGB"))
                except (UnidentifiedImageError, OSError) as e:
                    raise ValueError(f"{w}: unreadable image ({e})") from None
            px = self.images(images=imgs, return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                feats = self.model.get_image_features(pixel_values=px.to(self.model.device))
                out.append(_pooled(feats).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)


@register_encoder("hf")
class HFText(_HF):
    """A Hugging Face text encoder (`AutoModel`), mean-pooled over non-padding tokens."""

    modality = "text"
    takes_path = True

    def __init__(self, spec: str, path: str, modality: str | None = None) -> None:
        if modality not in (None, "text"):
            raise ValueError(f"encoder '{spec}': a text encoder cannot encode '{modality}'")
        folder = _check_folder(spec, path, (), False)
        self.spec = spec
        self.model, self.tokenizer, _ = _load(spec, folder, "auto")
        self.dim = int(self.model.config.hidden_size)

    def _text_batch(self, tok):
        hidden = self.model(**tok).last_hidden_state
        mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    def encode(self, payloads, where):
        return self._texts(payloads, where)


def _pooled(out):
    """transformers 5 returns a model output whose pooler_output is the projected embedding."""
    return getattr(out, "pooler_output", out)
