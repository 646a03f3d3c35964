"""What each run holds beyond its heads, so equal memory is a recorded fact, not a promise.

Read from a run's final step folder: samples stored by the method's replay or episodic memory,
bytes of its saved state (buffers, Fisher matrices, covariances, Gaussians, adapters), and the
trainable parameters it adds to the model (COMM's adapters and routers).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cmcl.io import write_json
from cmcl.steps import load_model, load_strategy
from cmcl.strategies.helpers.replay import SlotMemory


def measure(step_dir: str | Path) -> dict:
    """samples, state_bytes and extra_params of one saved step (loaded as evaluation does)."""

    step_dir = Path(step_dir)
    model, _ = load_model(step_dir)
    strategy = load_strategy(step_dir, model)
    state = step_dir / "state"
    files = [f for f in state.rglob("*") if f.is_file()] if state.is_dir() else []
    return {"samples": sum(int(v.size) for v in vars(strategy).values()
                           if isinstance(v, SlotMemory)),
            "state_bytes": sum(f.stat().st_size for f in files),
            "extra_params": int(strategy.extra_parameters())}


def collect(step_dirs: Sequence[str | Path], out: str | Path) -> dict:
    """{sequence: {run: mean over seeds}} from results/runs/<seq>/<run>/seed<k>/step<T>."""
    per: dict[tuple[str, str], list[dict]] = {}
    for d in map(Path, step_dirs):
        per.setdefault((d.parts[-4], d.parts[-3]), []).append(measure(d))
    table: dict = {}
    for (seq, run), rows in sorted(per.items()):
        table.setdefault(seq, {})[run] = {k: int(np.mean([r[k] for r in rows])) for k in rows[0]}
    write_json(out, table)
    return table
