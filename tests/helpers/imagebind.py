"""The ImageBind model code (or a skip) and tiny random-weight checkpoints built from it."""

from __future__ import annotations

from pathlib import Path

import pytest


def require_imagebind():
    """cmcl.encoders.imagebind with the wheel's model code importable, else skip the module."""
    ib = pytest.importorskip("cmcl.encoders.imagebind")
    try:
        ib.model_module()
    except ImportError as e:  # pragma: no cover - the wheel is part of `make install`
        pytest.skip(f"imagebind-unofficial not installed ({e})", allow_module_level=True)
    return ib


def tiny_model(width: int = 32, seed: int = 0):
    """A random-weight ImageBind of width `width`, one block and one head per tower."""
    import torch

    kw = {"out_embed_dim": width}
    for tower in ("vision", "audio", "text", "depth", "thermal", "imu"):
        kw.update({f"{tower}_embed_dim": width, f"{tower}_num_blocks": 1,
                   f"{tower}_num_heads": 1})
    torch.manual_seed(seed)
    return require_imagebind().model_module().ImageBindModel(**kw).eval()


def tiny_imagebind(path: Path, width: int = 16) -> Path:
    """tiny_model saved as a state dict at `path` (what `imagebind:<path>` loads)."""
    import torch

    torch.save(tiny_model(width).state_dict(), path)
    return path
