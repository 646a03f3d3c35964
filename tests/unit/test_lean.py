"""A training step imports neither TorchDynamo nor DTensor, and trains as torch's own code."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
if sys.argv[1] == "dynamo":
    import torch._dynamo  # torch's own wrappers then run in full (graph breaks included)
import torch
from cmcl.lean import set_seed
from cmcl.models import MultiHead
from cmcl.strategies import get_strategy
from cmcl.train import fit_task, weights_digest

set_seed(3, deterministic=True)
assert torch.are_deterministic_algorithms_enabled()
cfg = {"train": {"epochs": 2, "batch_size": 16, "lr": 0.05, "weight_decay": 0.01,
                 "grad_clip": 1.0}, "loss": {}, "methods": {}}
model = MultiHead({"a": 12, "b": 6}, 4)
model.reset("orthogonal", 0)
g = torch.Generator().manual_seed(0)
xa, xb = torch.randn(64, 12, generator=g), torch.randn(64, 6, generator=g)
task = {"name": "t", "modalities": ["a", "b"]}
model, _ = fit_task(model, get_strategy("finetune", cfg), cfg, task, 1, 3, xa, xb,
                    torch.arange(64) % 4)
print(weights_digest(model), "torch._dynamo" in sys.modules,
      "torch.distributed.tensor" in sys.modules)
"""


def run(mode: str) -> list[str]:
    p = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                       timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout.split()


def test_training_without_dynamo_equals_training_with_it():
    lean, full = run("lean"), run("dynamo")
    assert lean[1] == "False", "a training step imported torch._dynamo (CPU time in every job)"
    assert lean[2] == "False", "accelerate's DTensor check imported torch.distributed.tensor"
    assert full[1] == "True" and lean[0] == full[0]
