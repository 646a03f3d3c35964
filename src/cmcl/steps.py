"""A saved step folder: its model and its method's state, loaded and checked against what the
step recorded. Evaluation, resources and verify read steps through here, without training."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from cmcl.io import check_digest, load_tensors_digest, read_json, recorded_digest, verify_files
from cmcl.models import MultiHead
from cmcl.strategies import Strategy, get_strategy


def weights_digest(model: torch.nn.Module) -> str:
    """Content hash of a model's weights: lets tests and users verify that steps chain."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_model(step_dir: str | Path) -> tuple[MultiHead, dict]:
    """Rebuild a step's model from its meta.json and safetensors weights (no pickle).

    The file's bytes are hashed once as they are read and compared with the sha256 the step
    recorded (steps from before that: the weights digest), so a damaged checkpoint stops here.
    """
    step_dir = Path(step_dir)
    meta = read_json(step_dir / "meta.json")
    mc = meta["model"]
    model = MultiHead(mc["in_dims"], mc["embed_dim"], mc["bias"])
    path = step_dir / "model.safetensors"
    state, found = load_tensors_digest(path)
    model.check_state(state, str(path))
    expected = recorded_digest(meta, "model.safetensors")
    check_digest(path, expected, found)
    model.load_state_dict(state)
    if expected is None and meta.get("log", {}).get("final_digest"):
        check_digest(path, meta["log"]["final_digest"], weights_digest(model))
    return model, meta


def load_state_dir(strategy: Strategy, step_dir: str | Path, meta: dict,
                   model: MultiHead) -> None:
    """strategy.load_state on a step's state/ folder, its files checked against meta.json."""
    state = Path(step_dir) / "state"
    verify_files(step_dir, meta, "state/")
    strategy.load_state(state if state.exists() else None, model)


def load_strategy(step_dir: str | Path, model: MultiHead) -> Strategy:
    """The method of a saved step with its options and state (evaluation embeds through it)."""
    meta = read_json(Path(step_dir) / "meta.json")
    cfg = {"methods": {meta["method"]: meta.get("options", {})}}
    strategy = get_strategy(meta["method"], cfg)
    load_state_dir(strategy, step_dir, meta, model)
    return strategy
