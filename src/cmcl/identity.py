"""A stage's config and its identities: what its output and what a result depend on.

The leaf under cmcl.stages (which builds each stage from params): resume and sweep
fingerprints use these without importing the params layer.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# train keys added after results were recorded, at the values that reproduce the earlier
# behaviour: left out of result identities (the train rule's params trigger, check
# fingerprints), so adding them neither reruns finished steps nor voids expected results
NEUTRAL_TRAIN = {"preset": "default", "drop_last": True, "lr_schedule": "constant",
                 "warmup_steps": 0, "warmup_fraction": 0, "decay_biases": True}


def as_json(obj: Any) -> str:
    """Compact, key-sorted JSON: equal configs give equal strings (and digests)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def digest(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


def _without(values: Mapping, keys: Sequence[str], neutral: Mapping[str, Any]) -> dict:
    """A copy of `values` without the dotted `keys`, and without neutral keys at their value."""
    out = copy.deepcopy(dict(values))
    for key, drop_if in [*((k, None) for k in keys), *((k, (v,)) for k, v in neutral.items())]:
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and (drop_if is None
                                                        or node[leaf] == drop_if[0]):
            del node[leaf]
    return out


@dataclass(frozen=True)
class Stage:
    """One job's config and what of it can change a result."""

    name: str
    values: dict
    not_output: tuple[str, ...] = ()
    not_result: tuple[str, ...] = ()
    neutral: Mapping[str, Any] = field(default_factory=dict)

    def output_identity(self) -> dict:
        """What the job's output depends on: Snakemake reruns the job when it changes."""
        return _without(self.values, self.not_output, self.neutral)

    def result_identity(self) -> dict:
        """What any number computed from the job's output depends on."""
        return _without(self.values, self.not_output + self.not_result, self.neutral)

    def params(self) -> str:
        return as_json(self.output_identity())

    def key(self) -> str:
        return digest(self.result_identity())


# the declarations: each stage's keys that cannot change its output or a result
SHARD_IGNORES = {"not_output": ("shard.workers",),
                 "not_result": ("shard.samples_per_shard", "shard.max_shard_mb")}
EMBED_IGNORES = {"not_output": ("embed.processes",), "not_result": ("embed.max_shard_mb",),
                 "neutral": {"embed.storage_dtype": None}}
CHECKPOINTS = ("train.checkpoint_every",)  # how often a step saves: never its weights
# a step reads the shared train section; the matrix (methods, seeds) is the wildcards' business
MATRIX = ("train.methods", "train.seeds")
TRAIN_IGNORES = {"not_output": (*CHECKPOINTS, *MATRIX),
                 "neutral": {f"train.{k}": v for k, v in NEUTRAL_TRAIN.items()}}
