"""ImageBind (Girdhar et al., CVPR 2023) as a frozen encoder: `imagebind:/path/imagebind_huge.pth`.

One checkpoint, one tower per modality, all in one 1024-d space (ImageBind-Huge):

| cmcl modality | tower | input (published transform, see below) |
|---|---|---|
| image | vision | RGB, bicubic short side 224, centre crop 224, CLIP mean/std |
| video | vision | 5 clips of 2 s, 2 frames each, short side 224 (bilinear), 3 crops: mean of 15 |
| text | text | CLIP BPE (the wheel's bpe_simple_vocab_16e6.txt.gz), 77 tokens |
| audio | audio | 16 kHz, 3 clips of 2 s, 128-bin kaldi log-mel, 204 frames, mean -4.268 std 9.138 |
| depth | depth | 16-bit PNG (mm) -> disparity (Omnivore convention), 1 channel 224 |
| thermal | thermal | grey, bicubic short side 224, centre crop 224, values in [0, 1], 1 channel |

Every output row is L2-normalised (ImageBind's heads normalise, then scale by a per-modality
logit constant (text learnt, audio 20, depth 5, thermal 10); the mean over clips/crops is
normalised again here, so all towers give unit vectors).

The checkpoint is a state dict: the official `imagebind_huge.pth` (read with
`torch.load(weights_only=True)`: pickled code is refused) or a `.safetensors` file of the same
keys. Widths, depths and patch sizes are read off the tensors' shapes, so smaller ImageBind-style
checkpoints (the tests' tiny one) load too; attention heads do not show in shapes: a tower as wide
as ImageBind-Huge's gets Huge's head count, another one the `<tower>_num_heads` entry of a
safetensors file's metadata, else width // 64 (at least 1). The model is built on the meta
device and only the towers a job asks for are materialised (from a memory-mapped file), cast to
the requested dtype and moved to CUDA when available.

Model code: the `imagebind-unofficial` 0.1.1 wheel (Meta's code, CC BY-NC-SA 4.0; installed
`--no-deps` by `make install`). Its package `__init__` imports its `data` module, which needs
torchvision, torchaudio and pytorchvideo: their wheels here are CUDA builds that replace the CPU
torch and break transformers' CLIP import, so they are never installed. The model modules are
therefore imported under a bare `imagebind` package object (no `__init__` run), and the two names
they take from timm (`DropPath`, `trunc_normal_`) come from a shim put in `sys.modules` only while
they import: timm itself imports torchvision at import time (`timm.layers.create_norm`).

Why hand-written preprocessing: ImageBind's transforms (its `data.py`) are written with
torchvision, torchaudio and pytorchvideo, which cannot be installed (above). They are re-written
here with PIL, numpy, PyAV, soundfile and plain torch ops, following the published code step by
step (torchvision's Resize/CenterCrop rounding, pytorchvideo's ConstantClipsPerVideoSampler,
UniformTemporalSubsample, ShortSideScale and SpatialCrop, torchaudio's sinc_interp_hann
resampler and kaldi fbank). Deviations: video frames are decoded by PyAV instead of decord (same
frame indices; RGB conversion by FFmpeg's swscale in both); the reference subtracts each audio
clip's mean in place from the shared waveform, which leaks into the next overlapping clip (a DC
step in frames straddling a clip end); every frame's DC offset is removed by the fbank anyway,
so that leak is not reproduced. ImageBind never released its depth and thermal transforms: depth
follows Omnivore's (which ImageBind's paper cites): disparity = baseline * focal / depth (NYUv2
Kinect: 0.075 m, 518.857901 px; depth clipped to [0.01, 50] m, missing depth -> 0),
DepthNorm(max 75), bicubic 224, centre crop, mean 0.0418 std 0.0295; thermal is the grey image in
[0, 1] without normalisation (LLVIP accuracy is better so, per ImageBind issue/PR #73).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import io
import math
import sys
import types
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from cmcl.encoders import Encoder, register_encoder

WHEEL = "imagebind-unofficial==0.1.1"
TOWERS = {"image": "vision", "video": "vision", "text": "text", "audio": "audio",
          "depth": "depth", "thermal": "thermal"}
DTYPES = ("float32", "float16", "bfloat16")
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
SIZE = 224
# ImageBind's data.py defaults
AUDIO_RATE, AUDIO_BINS, AUDIO_FRAMES = 16000, 128, 204
AUDIO_CLIP_S, AUDIO_CLIPS, AUDIO_MEAN, AUDIO_STD = 2, 3, -4.268, 9.138
VIDEO_CLIP_S, VIDEO_CLIPS, VIDEO_FRAMES, VIDEO_CROPS = 2, 5, 2, 3
# depth: Omnivore's disparity convention, NYUv2 (Kinect v1) camera, PNG in millimetres
DEPTH_UNIT_M, DEPTH_FOCAL_PX, DEPTH_BASELINE_M = 1e-3, 518.857901, 0.075
DEPTH_MIN_M, DEPTH_MAX_M, DISPARITY_MAX, DEPTH_MEAN, DEPTH_STD = 0.01, 50.0, 75.0, 0.0418, 0.0295
# ImageBind-Huge (imagebind_model.imagebind_huge): tower -> (width, blocks, heads)
HUGE = {"vision": (1280, 32, 16), "text": (1024, 24, 16), "audio": (768, 12, 12),
        "depth": (384, 12, 8), "thermal": (768, 12, 12), "imu": (512, 6, 8)}
HUGE_OUT = 1024
# the key whose last dim is each tower's width
WIDTH_KEY = {"vision": "modality_preprocessors.vision.cls_token",
             "text": "modality_preprocessors.text.token_embedding.weight",
             "audio": "modality_preprocessors.audio.cls_token",
             "depth": "modality_preprocessors.depth.cls_token",
             "thermal": "modality_preprocessors.thermal.cls_token",
             "imu": "modality_preprocessors.imu.cls_token"}
OBTAIN = ("the official ImageBind-Huge state dict imagebind_huge.pth "
          "(https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth, CC BY-NC-SA 4.0), "
          "or a .safetensors file of the same keys")


# --------------------------------------------------------------------------- model code


def _drop_path_class() -> type:
    """timm.layers.DropPath (stochastic depth, per sample); identity in eval mode."""
    import torch

    class DropPath(torch.nn.Module):
        def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
            super().__init__()
            self.drop_prob, self.scale_by_keep = drop_prob, scale_by_keep

        def forward(self, x):
            if self.drop_prob == 0.0 or not self.training:
                return x
            keep = 1 - self.drop_prob
            mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
            return x * (mask / keep if self.scale_by_keep and keep > 0 else mask)

    return DropPath


def _timm_shim() -> dict[str, types.ModuleType]:
    import torch

    timm, layers = types.ModuleType("timm"), types.ModuleType("timm.layers")
    layers.DropPath = _drop_path_class()
    layers.trunc_normal_ = torch.nn.init.trunc_normal_  # same algorithm as timm's
    timm.layers = layers
    return {"timm": timm, "timm.layers": layers}


@functools.cache
def model_module() -> types.ModuleType:
    """The wheel's `imagebind.models.imagebind_model`, without the package `__init__`."""
    name = "imagebind.models.imagebind_model"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("imagebind")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"encoder 'imagebind' needs the package {WHEEL}, installed with "
                          f"--no-deps (`make install` does it; `pip install --no-deps {WHEEL} "
                          "ftfy einops iopath`)")
    if "imagebind" not in sys.modules:  # a bare package: its __init__ would import data.py
        pkg = types.ModuleType("imagebind")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__spec__, pkg.__file__ = spec, spec.origin
        sys.modules["imagebind"] = pkg
    shim = {}
    try:
        importlib.import_module("timm.layers")
    except ImportError:  # absent, or present without torchvision
        shim = _timm_shim()
    saved = {k: sys.modules.get(k) for k in shim}
    sys.modules.update(shim)
    try:
        return importlib.import_module(name)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def bpe_path() -> Path:
    """The CLIP BPE vocabulary the wheel ships (imagebind/bpe/bpe_simple_vocab_16e6.txt.gz)."""
    model_module()
    return Path(sys.modules["imagebind"].__path__[0]) / "bpe" / "bpe_simple_vocab_16e6.txt.gz"


@functools.cache
def tokenizer():
    model_module()
    from imagebind.models.multimodal_preprocessors import SimpleTokenizer

    return SimpleTokenizer(bpe_path=str(bpe_path()))


# --------------------------------------------------------------------------- checkpoint


class Checkpoint:
    """Tensor names and shapes of a state dict file, tensors read on demand (memory-mapped)."""

    def __init__(self, spec: str, path: str | Path) -> None:
        import pickle

        import torch

        p = Path(path).expanduser()
        self.spec, self.path, self.metadata = spec, p, {}
        if not p.is_file():
            raise FileNotFoundError(f"encoder '{spec}': checkpoint {p} does not exist; "
                                    f"expected {OBTAIN}")
        if p.suffix == ".safetensors":
            from safetensors import SafetensorError, safe_open

            try:
                self._st = safe_open(str(p), framework="pt")
                self.shapes = {k: tuple(self._st.get_slice(k).get_shape())
                               for k in self._st.keys()}
                self.metadata = self._st.metadata() or {}
            except (SafetensorError, OSError, ValueError) as e:
                raise ValueError(f"encoder '{spec}': {p} is not a readable safetensors file "
                                 f"({e})") from None
            self._sd = None
            return
        with open(p, "rb") as f:
            head = f.read(4)
        if head != b"PK\x03\x04" and not head.startswith(b"\x80"):  # zip (torch.save) or pickle
            raise ValueError(f"encoder '{spec}': {p} is not a readable torch checkpoint (neither "
                             f"torch.save's zip format nor a legacy pickle); expected {OBTAIN}")
        try:
            try:
                sd = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:  # a legacy (non-zip) file cannot be memory-mapped
                if "mmap" not in str(e):
                    raise
                sd = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "weights only" not in str(e).lower():  # not a torch file at all
                raise ValueError(f"encoder '{spec}': {p} is not a readable torch checkpoint "
                                 f"({str(e).splitlines()[0][:200]})") from None
            first = next((ln.strip() for ln in str(e).splitlines()
                          if "unsupported" in ln.lower()), "")[:200]
            raise ValueError(f"encoder '{spec}': {p} holds pickled Python objects besides "
                             "tensors, and torch.load(weights_only=True) refuses them "
                             "(checkpoints are data, not code): save model.state_dict() with "
                             f"torch.save, or as .safetensors ({first or 'torch.load'})") from None
        except (RuntimeError, OSError, EOFError) as e:
            raise ValueError(f"encoder '{spec}': {p} is not a readable torch checkpoint "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        for wrapper in ("state_dict", "model"):  # {"model": state_dict} style files
            if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict) and len(sd) <= 3:
                sd = sd[wrapper]
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ValueError(f"encoder '{spec}': {p} is not a state dict (a mapping of names to "
                             f"tensors); expected {OBTAIN}")
        self._sd, self._st = sd, None
        self.shapes = {k: tuple(v.shape) for k, v in sd.items()}

    def tensors(self, keys: Sequence[str]) -> dict[str, Any]:
        if self._sd is not None:
            return {k: self._sd[k] for k in keys}
        return {k: self._st.get_tensor(k) for k in keys}


def _shape_error(ck: Checkpoint, msg: str) -> ValueError:
    return ValueError(f"encoder '{ck.spec}': {ck.path} is not an ImageBind checkpoint this "
                      f"encoder can build: {msg}; expected {OBTAIN}")


def infer_config(ck: Checkpoint) -> dict[str, Any]:
    """ImageBindModel keyword arguments read off the checkpoint's tensor shapes."""
    shapes = ck.shapes

    def need(key: str) -> tuple:
        if key not in shapes:
            some = ", ".join(sorted(shapes)[:3]) or "none"
            raise _shape_error(ck, f"key '{key}' is missing (its keys begin {some})")
        return shapes[key]

    cfg: dict[str, Any] = {"out_embed_dim": need("modality_heads.vision.2.weight")[0]}
    for tower, key in WIDTH_KEY.items():
        width = need(key)[-1]
        prefix = f"modality_trunks.{tower}.blocks."
        blocks = {k[len(prefix):].split(".", 1)[0] for k in shapes if k.startswith(prefix)}
        if not blocks:
            raise _shape_error(ck, f"no '{prefix}<i>.*' keys (the {tower} tower's blocks)")
        heads = _heads(ck, tower, width)
        cfg.update({f"{tower}_embed_dim": width, f"{tower}_num_blocks": len(blocks),
                    f"{tower}_num_heads": heads})
    cfg["kernel_size"] = tuple(need("modality_preprocessors.vision.rgbt_stem.proj.1.weight")[2:])
    cfg["audio_kernel_size"] = need("modality_preprocessors.audio.rgbt_stem.proj.weight")[-1]
    cfg["depth_kernel_size"] = need("modality_preprocessors.depth.depth_stem.proj.weight")[-1]
    cfg["thermal_kernel_size"] = need("modality_preprocessors.thermal.rgbt_stem.proj.weight")[-1]
    cfg["imu_kernel_size"] = 8  # only the IMU stem's input width shows it (48 = 6 * 8)
    return cfg


def _heads(ck: Checkpoint, tower: str, width: int) -> int:
    meta = ck.metadata.get(f"{tower}_num_heads")
    if meta is not None:
        heads = int(meta)
    elif width == HUGE[tower][0]:
        heads = HUGE[tower][2]
    else:
        heads = max(1, width // 64)
    if width % heads:
        raise _shape_error(ck, f"the {tower} tower's width {width} is not a multiple of its "
                               f"{heads} attention heads")
    return heads


def check_architecture(ck: Checkpoint, model) -> None:
    """Every key the model has, with its shape, and no other: else name the first culprit."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for k, shape in want.items():
        if k not in ck.shapes:
            raise _shape_error(ck, f"key '{k}' is missing")
        if ck.shapes[k] != shape:
            raise _shape_error(ck, f"key '{k}' has shape {list(ck.shapes[k])}, the model built "
                                   f"from the checkpoint's widths expects {list(shape)}")
    extra = sorted(set(ck.shapes) - set(want))
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise _shape_error(ck, f"unexpected key '{extra[0]}'{more}")


def _cpu_linspace_mode():
    import torch

    class CpuLinspace(torch.overrides.TorchFunctionMode):
        """Inside torch.device("meta"): SimpleTransformer reads its drop-path rates with
        `torch.linspace(...).item()`, which a meta tensor cannot answer; make that one on CPU."""

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            if func is torch.linspace and kwargs.get("device") is None:
                kwargs["device"] = "cpu"
            return func(*args, **kwargs)

    return CpuLinspace()


class Model:
    """An ImageBindModel on the meta device; `tower(name)` materialises one tower's weights."""

    checkpoint = Checkpoint  # how the file is read (UniBind's keys sit under a prefix)

    def __init__(self, spec: str, path: str, device: str, dtype: str) -> None:
        import torch

        self.ck = self.checkpoint(spec, path)
        self.config = infer_config(self.ck)
        ib = model_module()
        with torch.device("meta"), _cpu_linspace_mode():
            self.net = ib.ImageBindModel(**self.config).eval()
        check_architecture(self.ck, self.net)
        self.device, self.dtype = torch.device(device), getattr(torch, dtype)
        self.loaded: set[str] = set()

    @property
    def dim(self) -> int:
        return int(self.config["out_embed_dim"])

    def tower(self, name: str):
        if name not in self.loaded:
            parts = [f"modality_{p}.{name}." for p in
                     ("preprocessors", "trunks", "heads", "postprocessors")]
            keys = [k for k in self.ck.shapes if k.startswith(tuple(parts))]
            self.net.load_state_dict(self.ck.tensors(keys), strict=False, assign=True)
            for part in ("preprocessors", "trunks", "heads", "postprocessors"):
                sub = getattr(self.net, f"modality_{part}")[name]
                left = [n for n, t in (*sub.named_parameters(), *sub.named_buffers())
                        if t.is_meta]
                if left:
                    raise _shape_error(self.ck, f"the {name} tower's '{left[0]}' was not loaded")
                sub.to(device=self.device, dtype=self.dtype).requires_grad_(False)
            self.loaded.add(name)
        return self.net

    def forward(self, name: str, x, normalise: bool = True):
        """ImageBindModel.forward for one modality; (B, S, ...) clips averaged; L2-normalised
        (`normalise=False`: the model's own output, float32 on the CPU, for heads on top)."""
        import torch

        net = self.tower(name)
        x = x.to(self.device, self.dtype if x.is_floating_point() else x.dtype)
        with torch.inference_mode():
            y = net({name: x})[name].float()
        y = torch.nn.functional.normalize(y, dim=-1) if normalise else y
        return y.cpu().numpy()


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.lru_cache(maxsize=2)
def _load(spec: str, path: str, stamp: tuple, device: str, dtype: str) -> Model:
    """One load per checkpoint file (and device, dtype) in a process; towers are shared."""
    return Model(spec, path, device, dtype)


def load(spec: str, path: str | Path, dtype: str = "float32", device: str | None = None) -> Model:
    p = Path(path).expanduser()
    stamp = (p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else ()
    return _load(spec, str(p), stamp, device or _device(), dtype)


# --------------------------------------------------------------------------- preprocessing


def _open_image(data: bytes):
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def resize_short_side(img, size: int = SIZE):
    """torchvision Resize(size, BICUBIC) on a PIL image: short side -> size, long side truncated."""
    from PIL import Image

    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return img.resize((new_w, new_h), Image.BICUBIC)


def center_crop(x: np.ndarray, size: int = SIZE) -> np.ndarray:
    """torchvision CenterCrop on an (..., H, W) array (offsets rounded as torchvision does)."""
    h, w = x.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[..., top:top + size, left:left + size]


def image_input(data: bytes) -> np.ndarray:
    """(3, 224, 224) float32: ImageBind's load_and_transform_vision_data."""
    img = resize_short_side(_open_image(data).convert("RGB"))
    x = np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0
    return (center_crop(x) - CLIP_MEAN[:, None, None]) / CLIP_STD[:, None, None]


def thermal_input(data: bytes) -> np.ndarray:
    """(1, 224, 224) float32 in [0, 1]: grey, bicubic short side 224, centre crop."""
    img = resize_short_side(_open_image(data).convert("L"))
    return center_crop(np.asarray(img, np.float32)[None] / 255.0)


def depth_input(data: bytes) -> np.ndarray:
    """(1, 224, 224) float32: 16-bit depth (mm) -> disparity -> DepthNorm -> 224 -> mean/std."""
    from PIL import Image

    img = _open_image(data)
    if img.mode not in ("I;16", "I;16L", "I;16B", "I"):
        raise ValueError(f"depth must be a 16-bit single-channel image in millimetres, got mode "
                         f"{img.mode}")
    raw = np.asarray(img).astype(np.float64)
    metres = np.clip(raw * DEPTH_UNIT_M, DEPTH_MIN_M, DEPTH_MAX_M)
    disparity = np.where(raw > 0, DEPTH_BASELINE_M * DEPTH_FOCAL_PX / metres, 0.0)
    disparity[disparity < DEPTH_MIN_M] = 0.0  # Omnivore DepthNorm, then clamp and scale
    disparity = np.minimum(disparity, DISPARITY_MAX) / DISPARITY_MAX
    scaled = resize_short_side(Image.fromarray(disparity.astype(np.float32), mode="F"))
    x = center_crop(np.asarray(scaled, np.float32)[None])
    return (x - DEPTH_MEAN) / DEPTH_STD


def clip_starts(duration: float, clip_s: float, clips: int) -> list[Fraction]:
    """pytorchvideo ConstantClipsPerVideoSampler: `clips` starts i * max(D - clip, 0) / clips."""
    step = Fraction(max(duration - clip_s, 0)) / clips
    return [step * i for i in range(clips)]


@functools.cache
def _resample_kernel(orig: int, new: int) -> tuple[Any, int]:
    import torch

    width_zeros, rolloff = 6, 0.99
    base = min(orig, new) * rolloff
    width = math.ceil(width_zeros * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = torch.arange(0, -new, -1)[:, None, None] / new + idx
    t *= base
    t = t.clamp_(-width_zeros, width_zeros)
    window = torch.cos(t * math.pi / width_zeros / 2) ** 2
    t *= math.pi
    kernels = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernels *= window * (base / orig)
    return kernels.to(torch.float32), width


def resample(wave: np.ndarray, orig: int, new: int = AUDIO_RATE) -> np.ndarray:
    """torchaudio.functional.resample (sinc_interp_hann, 6 zero crossings, rolloff 0.99)."""
    import torch

    if orig == new:
        return wave
    g = math.gcd(int(orig), int(new))
    o, n = int(orig) // g, int(new) // g
    kernel, width = _resample_kernel(o, n)
    x = torch.from_numpy(np.ascontiguousarray(wave, np.float32))
    length = x.shape[-1]
    x = torch.nn.functional.pad(x, (width, width + o))
    # torchaudio's conv1d(x, kernel, stride=o) as windows @ kernel: the same sums, faster on CPU
    windows = x.unfold(-1, kernel.shape[-1], o)  # (channels, steps, taps)
    y = (windows @ kernel[:, 0].T).reshape(x.shape[0], -1)  # (channels, steps * n)
    return y[:, :math.ceil(n * length / o)].numpy()


@functools.cache
def kaldi_mel_banks(bins: int = AUDIO_BINS, rate: int = AUDIO_RATE, fft: int = 512,
                    low: float = 20.0) -> np.ndarray:
    """torchaudio.compliance.kaldi.get_mel_banks (no VTLN), padded to fft // 2 + 1 columns."""
    def mel(f):
        return 1127.0 * np.log(1.0 + np.asarray(f, np.float64) / 700.0)

    high = rate / 2
    lo, hi = mel(low), mel(high)
    delta = (hi - lo) / (bins + 1)
    b = np.arange(bins, dtype=np.float64)[:, None]
    left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
    m = mel(rate / fft * np.arange(fft // 2))[None, :]
    up, down = (m - left) / (center - left), (right - m) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))
    return np.pad(banks, ((0, 0), (0, 1))).astype(np.float32)


def kaldi_fbank(wave: np.ndarray, rate: int = AUDIO_RATE, bins: int = AUDIO_BINS) -> np.ndarray:
    """(frames, bins) log-mel: torchaudio.compliance.kaldi.fbank with ImageBind's options.

    25 ms frames every 10 ms (snip edges), per-frame DC removal, pre-emphasis 0.97, symmetric
    Hann ("hanning") window, 512-point power spectrum, kaldi mel banks from 20 Hz, log with a
    float32-epsilon floor; dither 0, no energy term. Vectorised over frames (float32, as torch).
    """
    length, shift, fft = int(rate * 0.025), int(rate * 0.010), 512
    x = np.asarray(wave, np.float32)
    if len(x) < length:
        return np.zeros((0, bins), np.float32)
    n = 1 + (len(x) - length) // shift
    frames = np.lib.stride_tricks.as_strided(x, (n, length), (x.strides[0] * shift,
                                                              x.strides[0])).copy()
    frames -= frames.mean(axis=1, keepdims=True)
    prev = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames - 0.97 * prev
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / (length - 1))).astype(np.float32)
    spectrum = np.abs(np.fft.rfft(frames * window, n=fft, axis=1)) ** 2
    mel = spectrum.astype(np.float32) @ kaldi_mel_banks(bins, rate, fft).T
    return np.log(np.maximum(mel, np.finfo(np.float32).eps)).astype(np.float32)


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """(channels, samples) float32 in [-1, 1] and the rate (what torchaudio.load gives)."""
    import soundfile as sf

    try:
        wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise ValueError(f"unreadable audio ({e})") from None
    if not len(wave):
        raise ValueError("no audio frames")
    return wave.T, int(rate)


def audio_input(data: bytes) -> np.ndarray:
    """(3, 1, 128, 204) float32: ImageBind's load_and_transform_audio_data."""
    wave, rate = decode_audio(data)
    wave = resample(wave, rate, AUDIO_RATE)
    out = []
    for start in clip_starts(wave.shape[1] / AUDIO_RATE, AUDIO_CLIP_S, AUDIO_CLIPS):
        a, b = int(start * AUDIO_RATE), int((start + AUDIO_CLIP_S) * AUDIO_RATE)
        clip = wave[:, a:b]
        clip = clip - clip.mean()
        fb = kaldi_fbank(clip[0]).T  # kaldi.fbank reads channel 0
        fb = np.pad(fb, ((0, 0), (0, max(0, AUDIO_FRAMES - fb.shape[1]))))[:, :AUDIO_FRAMES]
        out.append((fb[None] - AUDIO_MEAN) / AUDIO_STD)
    return np.stack(out).astype(np.float32)


def video_frame_indices(n_frames: int, fps: float) -> list[list[int]]:
    """Per clip, the 2 frame indices ImageBind takes (decord reader + pytorchvideo sampler)."""
    duration = float(n_frames) / float(fps)
    out = []
    for start in clip_starts(duration, VIDEO_CLIP_S, VIDEO_CLIPS):
        a = math.ceil(fps * start)
        b = min(math.ceil(fps * (start + VIDEO_CLIP_S)), n_frames)
        if b <= a:
            raise ValueError(f"no frames in the clip at {float(start):.2f} s")
        t = b - a  # UniformTemporalSubsample: linspace(0, t - 1, 2).long()
        out.append([a + int(v) for v in np.linspace(0, t - 1, VIDEO_FRAMES, dtype=np.float32)])
    return out


def decode_frames(data: bytes) -> tuple[dict[int, np.ndarray], list[list[int]]]:
    """The frames ImageBind's sampler picks, as RGB uint8 (H, W, 3), decoded with PyAV."""
    import av

    try:
        with av.open(io.BytesIO(data)) as c:
            if not c.streams.video:
                raise ValueError("no video stream")
            vs = c.streams.video[0]
            fps = vs.average_rate or vs.guessed_rate or vs.base_rate
            n = vs.frames or sum(1 for p in c.demux(vs) if p.size)
        if not fps or not n:
            raise ValueError("no video frames (or no frame rate)")
        idx = video_frame_indices(int(n), float(fps))
        want = {i for clip in idx for i in clip}
        frames: dict[int, np.ndarray] = {}
        last = None
        with av.open(io.BytesIO(data)) as c:
            vs = c.streams.video[0]
            vs.thread_type = "AUTO"
            for i, frame in enumerate(c.decode(vs)):
                if i in want:
                    frames[i] = frame.to_ndarray(format="rgb24")
                last = (i, frame)
                if i >= max(want):
                    break
    except av.error.FFmpegError as e:
        raise ValueError(f"unreadable video ({e})") from None
    if last is None:
        raise ValueError("no decodable video frame")
    for i in want - set(frames):  # fewer frames decoded than declared: decord clamps too
        frames[i] = frames.get(last[0]) if last[0] in frames else last[1].to_ndarray(
            format="rgb24")
    return frames, idx


def video_input(data: bytes) -> np.ndarray:
    """(15, 3, 2, 224, 224) float32: ImageBind's load_and_transform_video_data."""
    import torch

    frames, idx = decode_frames(data)
    crops = []
    for clip in idx:
        x = torch.from_numpy(np.stack([frames[i] for i in clip])).float() / 255.0  # T H W C
        x = x.permute(3, 0, 1, 2)  # C T H W
        _, _, h, w = x.shape
        if w < h:
            new_h, new_w = int(math.floor(h / w * SIZE)), SIZE
        else:
            new_h, new_w = SIZE, int(math.floor(w / h * SIZE))
        x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bilinear",
                                            align_corners=False)
        x = ((x - torch.from_numpy(CLIP_MEAN)[:, None, None, None])
             / torch.from_numpy(CLIP_STD)[:, None, None, None])
        crops.extend(spatial_crops(x.numpy()))
    return np.stack(crops).astype(np.float32)


def spatial_crops(x: np.ndarray, size: int = SIZE) -> list[np.ndarray]:
    """ImageBind's SpatialCrop(224, 3): left/centre/right (or top/centre/bottom) crops."""
    h, w = x.shape[-2:]
    out = []
    for i in range(VIDEO_CROPS):
        y0, x0 = math.ceil((h - size) / 2), math.ceil((w - size) / 2)
        if h > w:
            y0 = {0: 0, 1: y0, 2: h - size}[i]
        else:
            x0 = {0: 0, 1: x0, 2: w - size}[i]
        out.append(x[..., y0:y0 + size, x0:x0 + size])
    return out


def text_input(texts: Sequence) -> np.ndarray:
    """(B, 77) int64 CLIP BPE tokens (ImageBind's load_and_transform_text)."""
    strs = [t.decode() if isinstance(t, bytes) else str(t) for t in texts]
    return tokenizer()(strs).reshape(len(strs), -1).numpy()


PREPROCESS: dict[str, Callable[[bytes], np.ndarray]] = {
    "image": image_input, "video": video_input, "audio": audio_input, "depth": depth_input,
    "thermal": thermal_input}
KIND = {"image": "image", "video": "video", "audio": "audio", "depth": "depth image",
        "thermal": "thermal image"}


# --------------------------------------------------------------------------- the encoder


@register_encoder("imagebind")
class ImageBind(Encoder):
    """ImageBind towers (see module docstring); the modality picks the tower."""

    takes_path = True
    modality, dim = "*", 0
    batch = 32  # model inputs per forward pass (a video counts 15, an audio clip set 3)
    towers, family = TOWERS, "ImageBind"  # modality -> tower this kind serves
    normalise = True  # L2-normalised rows; UniBind normalises after its heads instead

    def __init__(self, spec: str, path: str, modality: str | None = None,
                 dtype: str = "float32") -> None:
        if modality not in self.towers:
            raise ValueError(f"encoder '{spec}': {self.family} has towers for "
                             f"{sorted(self.towers)}, not '{modality}' (name the modality the "
                             "encoder is fed)" + self.hint(modality))
        if dtype not in DTYPES:
            raise ValueError(f"encoder '{spec}': dtype '{dtype}' is not one of {list(DTYPES)}")
        self.spec, self.modality, self.tower_name = spec, modality, self.towers[modality]
        # an image-file modality on the vision tower reads as an RGB image
        self.input = "image" if self.tower_name == "vision" and modality != "video" else modality
        self.model = self.load(spec, path, dtype)
        self.dim = self.model.dim

    @staticmethod
    def hint(modality: str | None) -> str:
        return ("; the DNS authors feed tactile (GelSight/DIGIT) images to the vision tower: "
                "name it 'imagebind-vision:<path>'") if modality == "tactile" else ""

    def load(self, spec: str, path: str, dtype: str) -> Model:
        return load(spec, path, dtype)

    def encode(self, payloads: Sequence, where: Sequence[str]) -> np.ndarray:
        import torch

        if self.modality == "text":
            step = self.batch
            chunks = [torch.from_numpy(text_input(payloads[i:i + step]))
                      for i in range(0, len(payloads), step)]
            out = [self.model.forward("text", c, self.normalise) for c in chunks]
            return self.finish(np.concatenate(out) if out else np.zeros((0, self.dim)))
        per = {"video": VIDEO_CLIPS * VIDEO_CROPS, "audio": AUDIO_CLIPS}.get(self.input, 1)
        step, prep, out = max(1, self.batch // per), PREPROCESS[self.input], []
        for i in range(0, len(payloads), step):
            xs = []
            for p, w in zip(payloads[i:i + step], where[i:i + step], strict=True):
                try:
                    xs.append(prep(p))
                except (ValueError, OSError) as e:  # PIL's UnidentifiedImageError is an OSError
                    raise ValueError(f"{w}: unreadable {KIND[self.input]} ({e})") from None
            out.append(self.model.forward(self.tower_name, torch.from_numpy(np.stack(xs)),
                                          self.normalise))
        return self.finish(np.concatenate(out) if out else np.zeros((0, self.dim)))

    def finish(self, x: np.ndarray) -> np.ndarray:
        """The tower outputs as features (ImageBind: as they are, already unit rows)."""
        return x.astype(np.float32)


@register_encoder("imagebind-vision")
class ImageBindVision(ImageBind):
    """ImageBind's vision tower for any image-file modality (`imagebind-vision:<path>`).

    Why: TVL's tactile images have no ImageBind tower; the DNS authors' extraction
    (perceptors/imagebind.py: modalityMap TACTILE -> VISION, the vision transform as the
    default loader) encodes them as RGB images with the vision tower, and so does this kind.
    """

    towers, family = {m: "vision" for m in ("image", "tactile", "depth", "thermal")}, \
        "ImageBind's vision tower"
