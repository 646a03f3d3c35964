"""Large frozen encoders from Hugging Face checkpoints in a local folder (never the network).

Specs (params `embed.encoders.<modality>`), one prefix per model family:
- `hf-clip:/models/clip-vit-b32`: CLIP (`CLIPModel`): text through the text tower, image-file
  modalities (image, depth, thermal, tactile) through the vision tower; the projected
  embedding (`projection_dim`), as the model returns it (not normalised, as before).
- `hf-siglip:/models/siglip2-base`: SigLIP or SigLIP 2 (`model_type` siglip / siglip2): text
  (padded to the model's length, as SigLIP was trained) and image files.
- `hf-clap:/models/clap-htsat`: CLAP: text and audio (WAV/FLAC/... decoded, mono, resampled
  to the feature extractor's rate, then `ClapFeatureExtractor`).
- `hf-xclip:/models/xclip-base-32`: X-CLIP: text and video (PyAV decodes `num_frames` frames
  spread evenly over the clip).
- `hf:/models/all-mpnet-base-v2`: any `AutoModel` text encoder, attention-mask mean-pooled
  last hidden state (what sentence-transformers does for most of its models).
SigLIP, CLAP and X-CLIP give L2-normalised embeddings (what their contrastive losses compare).

Why a prefix per family and not detection from config.json: the spec then says which
modalities it serves (a wrong-modality spec is refused before any model loads) and a folder of
another family is an error, not a silent switch. The folder's `model_type` must match.

The folder is what `save_pretrained` writes (or a downloaded snapshot): config.json, weights as
*.safetensors (pickled pytorch_model.bin is refused: checkpoints are data, not code; no remote
code runs), the tokenizer files, and for non-text towers preprocessor_config.json. Runs on
CUDA when available, in batches, without gradients. One load serves both towers.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path

import numpy as np

from cmcl.encoders import Encoder, register_encoder
from cmcl.encoders.payloads import read_audio, read_image, read_text, read_video_frames

IMAGE_LIKE = frozenset({"image", "depth", "thermal", "tactile"})
EXPECTED = ("a local folder as written by save_pretrained: config.json, model.safetensors, the "
            "tokenizer files (tokenizer.json or vocab files){}")
# model_type -> transformers model class; the processor of its non-text tower
MODELS = {"clip": "CLIPModel", "siglip": "SiglipModel", "siglip2": "Siglip2Model",
          "clap": "ClapModel", "xclip": "XCLIPModel"}
PROCESSORS = {"clap": "AutoFeatureExtractor"}  # every other family: AutoImageProcessor


def _check_folder(spec: str, path: str, kinds: tuple[str, ...], processor: bool
                  ) -> tuple[Path, str]:
    """Fail early, naming the spec, the path and what was expected, instead of a deep traceback."""
    expected = EXPECTED.format(", preprocessor_config.json" if processor else "")
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
    return p, kind


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=4)
def _load(spec: str, path: Path, kind: str, dtype: str = "float32") -> tuple:
    """(model, tokenizer, processor of the other tower or None), loaded once per folder and
    dtype (embed.dtype: float16/bfloat16 halve a GPU's memory; outputs are cast to float32)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers as tf

    opts = {"local_files_only": True}
    try:
        if kind in MODELS:
            model = getattr(tf, MODELS[kind]).from_pretrained(path, use_safetensors=True,
                                                              trust_remote_code=False, **opts)
            proc = getattr(tf, PROCESSORS.get(kind, "AutoImageProcessor"))
            other = proc.from_pretrained(path, trust_remote_code=False, **opts) \
                if (path / "preprocessor_config.json").is_file() else None
        else:
            model, other = tf.AutoModel.from_pretrained(path, use_safetensors=True,
                                                        trust_remote_code=False, **opts), None
        tokenizer = tf.AutoTokenizer.from_pretrained(path, trust_remote_code=False, **opts)
    except Exception as e:  # transformers, tokenizers and safetensors raise their own types
        raise ValueError(f"encoder '{spec}': cannot load the checkpoint in {path} "
                         f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    import torch

    return model.eval().to(_device(), getattr(torch, dtype)), tokenizer, other


class _HF(Encoder):
    modality, dim = "*", 0
    batch = 64  # encoder forward batch: bounded activation memory for large towers
    text_padding: dict = {"padding": True}

    def _texts(self, payloads, where):
        import torch

        texts = [read_text(p, w, self.spec) for p, w in zip(payloads, where, strict=True)]
        out = []
        for i in range(0, len(texts), self.batch):
            tok = self.tokenizer(texts[i:i + self.batch], truncation=True, return_tensors="pt",
                                 **self.text_padding).to(self.model.device)
            with torch.inference_mode():
                out.append(self._text_batch(tok).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)


class _TwoTower(_HF):
    """A contrastive text + X model; `modality` picks the tower (see module docstring)."""

    takes_path = True
    family, kinds, others, what = "", (), frozenset(), ""
    normalise = True

    def __init__(self, spec: str, path: str, modality: str | None = None,
                 dtype: str = "float32") -> None:
        if modality is not None and modality != "text" and modality not in self.others:
            raise ValueError(f"encoder '{spec}': {self.family} encodes text and {self.what} "
                             f"({sorted(self.others)}), not '{modality}'")
        needs = modality is None or modality in self.others
        folder, kind = _check_folder(spec, path, self.kinds, needs)
        self.spec, self.modality, self.kind = spec, modality or "*", kind
        self.model, self.tokenizer, self.processor = _load(spec, folder, kind, dtype)
        if needs and modality is not None and self.processor is None:
            raise FileNotFoundError(f"encoder '{spec}': {folder} has no "
                                    f"preprocessor_config.json (needed for {modality})")
        self.dim = self._dim(self.model.config)

    @staticmethod
    def _dim(config) -> int:
        return int(config.projection_dim)

    def _text_batch(self, tok):
        return self._out(self.model.get_text_features(**tok))

    def _out(self, feats):
        """The embedding of a model output (L2-normalised unless the family says otherwise)."""
        x = _pooled(feats)
        return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12) if self.normalise else x

    def _inputs(self, batch) -> dict:
        """A processor's output on the model's device; float tensors in the model's dtype."""
        return {k: v.to(self.model.device, self.model.dtype) if v.is_floating_point()
                else v.to(self.model.device) for k, v in batch.items()}

    def encode(self, payloads, where):
        if self.modality == "text" or (self.modality == "*" and isinstance(payloads[0], str)):
            return self._texts(payloads, where)
        import torch

        out = []
        for i in range(0, len(payloads), self.batch):
            with torch.inference_mode():
                feats = self._other(payloads[i:i + self.batch], where[i:i + self.batch])
            out.append(self._out(feats).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def _other(self, payloads, where):
        raise NotImplementedError


class _ImageTower(_TwoTower):
    others, what = IMAGE_LIKE, "image files"

    def _other(self, payloads, where):
        imgs = [read_image(p, w, self.spec, "RGB") for p, w in zip(payloads, where, strict=True)]
        inputs = self._inputs(self.processor(images=imgs, return_tensors="pt"))
        return self.model.get_image_features(**inputs)  # SigLIP 2 adds its patch mask, shapes


@register_encoder("hf-clip")
class HFClip(_ImageTower):
    """CLIP text and vision towers (see module docstring); the modality picks the tower."""

    family, kinds, normalise = "CLIP", ("clip",), False  # unnormalised: as before the others


@register_encoder("hf-siglip")
class HFSiglip(_ImageTower):
    """SigLIP / SigLIP 2 text and vision towers; text padded to the model's fixed length."""

    family, kinds = "SigLIP", ("siglip", "siglip2")

    @staticmethod
    def _dim(config) -> int:
        return int(config.text_config.hidden_size)  # both heads keep the towers' width

    def __init__(self, spec: str, path: str, modality: str | None = None,
                 dtype: str = "float32") -> None:
        super().__init__(spec, path, modality, dtype)
        # SigLIP pools the last position: text must be padded to the length it was trained at
        n = int(self.model.config.text_config.max_position_embeddings)
        self.text_padding = {"padding": "max_length",
                             "max_length": min(n, self.tokenizer.model_max_length or n)}


@register_encoder("hf-clap")
class HFClap(_TwoTower):
    """CLAP text and audio towers; audio at the feature extractor's rate, mono."""

    family, kinds, others, what = "CLAP", ("clap",), frozenset({"audio"}), "audio"

    def _other(self, payloads, where):
        import torch

        rate = int(self.processor.sampling_rate)
        feats = []
        for p, w in zip(payloads, where, strict=True):
            x = read_audio(p, w, self.spec, rate)
            with _seeded(0):  # clips past max_length_s get random crops: fixed, per clip
                feats.append(self.processor(x, sampling_rate=rate, return_tensors="pt"))
        batch = {k: torch.cat([f[k] for f in feats]) for k in feats[0].keys()}
        return self.model.get_audio_features(**self._inputs(batch))


@register_encoder("hf-xclip")
class HFXClip(_TwoTower):
    """X-CLIP text and video towers; `num_frames` frames per clip, evenly spread."""

    family, kinds, others, what = "X-CLIP", ("xclip",), frozenset({"video"}), "video"

    def _other(self, payloads, where):
        n = int(self.model.config.vision_config.num_frames)
        frames = [f for p, w in zip(payloads, where, strict=True)
                  for f in read_video_frames(p, w, self.spec, n)]
        px = self.processor(images=frames, return_tensors="pt")["pixel_values"]
        px = px.reshape(len(payloads), n, *px.shape[-3:])  # (clips, frames, C, H, W)
        return self.model.get_video_features(**self._inputs({"pixel_values": px}))


@register_encoder("hf")
class HFText(_HF):
    """A Hugging Face text encoder (`AutoModel`), mean-pooled over non-padding tokens."""

    modality = "text"
    takes_path = True

    def __init__(self, spec: str, path: str, modality: str | None = None,
                 dtype: str = "float32") -> None:
        if modality not in (None, "text"):
            raise ValueError(f"encoder '{spec}': a text encoder cannot encode '{modality}'")
        folder, _ = _check_folder(spec, path, (), False)
        self.spec = spec
        self.model, self.tokenizer, _ = _load(spec, folder, "auto", dtype)
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


@contextlib.contextmanager
def _seeded(seed: int):
    """numpy's global RNG (what ClapFeatureExtractor draws crops from) at `seed`, then restored."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)
