"""UniBind (Lyu et al., CVPR 2024) as a frozen encoder:
`unibind:<checkpoint>[,heads=<file>][,centres=<centres.safetensors>]`.

UniBind is ImageBind-Huge (inside its released `pretrained_weights.pt`, a Point-Bind
state dict whose ImageBind keys sit under `bind.`) plus, per modality, a fine-tuned
`nn.Linear(1024, 1024)` head (`mlp_for_<image|video|audio|thermal|event>`, in the fine-tuned
checkpoints of UniBind's train.py) and LLM-augmented class-centre embeddings (`centre_embs/
<modality>_in_center_embeddings.pkl`: class name -> (50, 1024) tensor) that replace text
prompts as the zero-shot classifier. Features here, as UniBind's `encode_vision_with_mlp`:
the ImageBind tower's output (cmcl.encoders.imagebind: same towers, same transforms), through
the modality's head when `heads=` names a file holding it, L2-normalised. Text has no head.
With `centres=` on the text encoder, a task's class features are that file's centres of its
classes (names compared case-, space- and underscore-insensitively) instead of encoded prompts.

Files: `<checkpoint>` is `pretrained_weights.pt` (or any state dict whose ImageBind keys carry
one common prefix, or none: the official imagebind_huge.pth works too), read with
`torch.load(weights_only=True)`; other keys (the point-cloud encoder) are ignored. `heads=` is
a .safetensors or state-dict file with `[prefix.]mlp_for_<modality>.{weight,bias}`; the
checkpoint's own heads are used when it has them. The centres are released as pickles, which
cmcl never loads in a pipeline: convert them once with `python -m cmcl convert-unibind-centres
<in.pkl> <out.safetensors>` (the only place cmcl unpickles, run by you on a file you trust).
Why not the DNS authors' UniBind features: their extraction (perceptors/unibind.py) calls
`backbone.bind(inputs)`, i.e. the ImageBind towers without heads or centres; that is this
encoder without `heads=`/`centres=` (or their HDF5 files through `features_h5`).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cmcl.encoders import imagebind as ib
from cmcl.encoders import register_encoder
from cmcl.io import atomic_path

ANCHOR = "modality_heads.vision.2.weight"  # every ImageBind state dict has it
# cmcl modality -> UniBind head (none for text, depth, tactile)
HEAD_NAMES = {"image": "image", "video": "video", "audio": "audio", "thermal": "thermal"}
TOWERS = {**ib.TOWERS, "tactile": "vision"}
OBTAIN = ("UniBind's pretrained_weights.pt (https://github.com/qc-ly/UniBind, README: "
          "pre-trained weights) or an ImageBind state dict")


def parse(spec: str) -> tuple[str, dict[str, str]]:
    """(checkpoint path, {heads, centres}) of a `unibind:` spec; a bad option names the spec."""
    body = spec.partition(":")[2]
    path, *rest = body.split(",")
    opts = {}
    for item in rest:
        key, eq, value = item.partition("=")
        if not eq or key not in ("heads", "centres") or not value or key in opts:
            raise ValueError(f"encoder '{spec}': options are ',heads=<file>' and "
                             f"',centres=<file.safetensors>' (each once), not {item!r}")
        opts[key] = value
    if not path:
        raise ValueError(f"encoder '{spec}': give the checkpoint, e.g. "
                         "'unibind:models/unibind/pretrained_weights.pt'")
    if "centres" in opts and Path(opts["centres"]).suffix != ".safetensors":
        raise ValueError(f"encoder '{spec}': centres must be a .safetensors file; convert the "
                         "released pickle once with `python -m cmcl convert-unibind-centres "
                         "<in.pkl> <out.safetensors>`")
    return path, opts


class PrefixedCheckpoint(ib.Checkpoint):
    """A state dict whose ImageBind keys share one prefix (`bind.` in UniBind's file): seen
    without it, other keys (the point-cloud encoder, heads) set aside."""

    def __init__(self, spec: str, path: str | Path) -> None:
        super().__init__(spec, path)
        anchors = [k for k in self.shapes if k.endswith(ANCHOR)]
        if len(anchors) != 1:
            raise ValueError(f"encoder '{spec}': {self.path} holds {len(anchors)} ImageBind "
                             f"models (keys ending in '{ANCHOR}'); expected one, in {OBTAIN}")
        self.prefix = anchors[0][:-len(ANCHOR)]
        full = self.shapes
        self.extra = {k: v for k, v in full.items() if not k.startswith(self.prefix)
                      or not k[len(self.prefix):].startswith("modality_")}
        self.shapes = {k[len(self.prefix):]: v for k, v in full.items() if k not in self.extra}

    def tensors(self, keys: Sequence[str]) -> dict:
        raw = super().tensors([self.prefix + k for k in keys])
        return {k[len(self.prefix):]: v for k, v in raw.items()}

    def raw(self, keys: Sequence[str]) -> dict:
        return super().tensors(keys)


class UniBindModel(ib.Model):
    checkpoint = PrefixedCheckpoint


@functools.lru_cache(maxsize=2)
def _load(spec: str, path: str, stamp: tuple, device: str, dtype: str) -> UniBindModel:
    return UniBindModel(spec, path, device, dtype)


def _read_heads(spec: str, ck: ib.Checkpoint, extra: Sequence[str]) -> dict[str, tuple]:
    """{head name: (weight, bias)} of the `mlp_for_<name>` keys among `extra`."""
    found: dict[str, dict] = {}
    for k in extra:
        m = re.search(r"(?:^|\.)mlp_for_([a-z]+)\.(weight|bias)$", k)
        if m:
            found.setdefault(m[1], {})[m[2]] = k
    out = {}
    for name, keys in found.items():
        if set(keys) != {"weight", "bias"}:
            raise ValueError(f"encoder '{spec}': {ck.path} has mlp_for_{name}.{set(keys).pop()} "
                             "without its partner (weight and bias)")
        t = ck.raw([keys["weight"], keys["bias"]]) if isinstance(ck, PrefixedCheckpoint) \
            else ck.tensors([keys["weight"], keys["bias"]])
        out[name] = (t[keys["weight"]].float(), t[keys["bias"]].float())
    return out


@register_encoder("unibind")
class UniBind(ib.ImageBind):
    """ImageBind towers + UniBind's per-modality head and class centres (module docstring)."""

    towers, family = TOWERS, "UniBind"
    normalise = False  # the head sees ImageBind's own output; rows are normalised after it

    def __init__(self, spec: str, path: str, modality: str | None = None,
                 dtype: str = "float32") -> None:
        ckpt, self.opts = parse(spec)
        super().__init__(spec, ckpt, modality, dtype)
        self.head = None
        name = HEAD_NAMES.get(modality or "")
        heads = _read_heads(spec, self.model.ck, list(self.model.ck.extra))
        if "heads" in self.opts:
            hk = ib.Checkpoint(spec, self.opts["heads"])
            heads = _read_heads(spec, hk, list(hk.shapes))
            if name not in heads:
                have = sorted(f"mlp_for_{h}" for h in heads) or "none"
                raise ValueError(f"encoder '{spec}': {hk.path} has no head for '{modality}' "
                                 f"(mlp_for_{name}; it holds {have})")
        if name in heads:
            w, b = heads[name]
            if tuple(w.shape) != (self.dim, self.dim) or tuple(b.shape) != (self.dim,):
                raise ValueError(f"encoder '{spec}': head mlp_for_{name} has shape "
                                 f"{list(w.shape)}, expected [{self.dim}, {self.dim}]")
            self.head = (w.numpy(), b.numpy())
        self.centres = None
        if "centres" in self.opts:
            if modality != "text":
                raise ValueError(f"encoder '{spec}': centres replace the text prompts: name "
                                 f"them on the text encoder, not on '{modality}'")
            self.centres = read_centres(spec, self.opts["centres"], self.dim)

    def load(self, spec: str, path: str, dtype: str) -> UniBindModel:
        p = Path(path).expanduser()
        stamp = (p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else ()
        return _load(spec.partition(",")[0], str(p), stamp, ib._device(), dtype)

    def finish(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if self.head is not None:
            w, b = self.head
            x = x @ w.T + b
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return (x / np.maximum(norm, 1e-12)).astype(np.float32)

    def class_features(self, classes: Sequence[str]) -> np.ndarray | None:
        """(classes, centres per class, d) unit rows, or None without `centres=`."""
        if self.centres is None:
            return None
        index = {_key(k): k for k in self.centres}
        missing = [c for c in classes if _key(c) not in index]
        if missing:
            raise ValueError(f"encoder '{self.spec}': the centres file has no class "
                             f"{missing[:5]} (it has {len(index)}, e.g. "
                             f"{sorted(self.centres)[:5]})")
        rows = [self.centres[index[_key(c)]] for c in classes]
        if len({r.shape for r in rows}) > 1:
            raise ValueError(f"encoder '{self.spec}': the classes' centre counts differ "
                             f"({sorted({len(r) for r in rows})})")
        x = np.stack(rows).astype(np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _key(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


def read_centres(spec: str, path: str | Path, dim: int) -> dict[str, np.ndarray]:
    """label -> (k, dim) float32 from a converted centres file; nothing is unpickled."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"encoder '{spec}': centres file {p} does not exist; convert "
                                "the released pickle once with `python -m cmcl "
                                "convert-unibind-centres <in.pkl> <out.safetensors>`")
    try:
        out = {k: v.reshape(-1, v.shape[-1]) for k, v in load_file(str(p)).items()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"encoder '{spec}': {p} is not a readable safetensors file ({e})"
                         ) from None
    bad = sorted({v.shape[-1] for v in out.values()} - {dim})
    if bad:
        raise ValueError(f"encoder '{spec}': centres in {p} are {bad[0]}-d, the model's "
                         f"features {dim}-d")
    return out


def convert_centres(src: str | Path, dst: str | Path) -> int:
    """UniBind's centre pickle -> safetensors (one (k, d) float32 tensor per class label).

    THIS UNPICKLES `src`: unpickling runs whatever code the file names, so run it only on the
    file you downloaded from UniBind's release, once, by hand; pipelines read only `dst`.
    """
    import pickle

    from safetensors.numpy import save_file


    with open(src, "rb") as f:
        obj = pickle.load(f)  # noqa: S301  (the documented one-off conversion, see above)
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{src}: expected a dict of class name -> centre embeddings (UniBind's "
                         f"centre_embs/*.pkl), got {type(obj).__name__}")
    out = {}
    for label, value in obj.items():
        arr = value.detach().cpu().float().numpy() if hasattr(value, "detach") else \
            np.asarray(value, np.float32)
        if arr.ndim not in (1, 2) or not arr.size:
            raise ValueError(f"{src}: class {label!r}: expected a (k, d) array, got shape "
                             f"{list(arr.shape)}")
        out[str(label)] = np.ascontiguousarray(arr.reshape(-1, arr.shape[-1]), np.float32)
    meta = {"format": "cmcl unibind centres 1", "labels": json.dumps(list(out)),
            "source": Path(src).name}
    with atomic_path(dst) as tmp:
        save_file(out, str(tmp), metadata=meta)
    return len(out)
