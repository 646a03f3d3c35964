"""ER: experience replay from a reservoir buffer of past pairs (Chaudhry et al. 2019).

Each step adds the InfoNCE of a replayed batch (one term per modality pair in it, weighted by
its share) to the current task's loss. The buffer is sampled before the current batch is
inserted and filled by reservoir sampling during training, as in Mammoth (Buzzega et al. 2020),
so it always holds a uniform sample of every pair streamed so far, current task included.

Only the current task's heads are trained by default, as for every other method here; a
replayed pair of another modality still protects the shared head through the frozen partner.
`train_replayed_heads` also trains the replayed modalities' heads.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cmcl.models import MultiHead
from cmcl.settings import StepConfig
from cmcl.strategies import LR, Strategy, TaskContext, choice, log_range, register
from cmcl.strategies.helpers.replay import ReservoirBuffer, replay_loss, step_generator

BUFFER_OPTIONS = {
    "memory_size": {"type": "integer", "minimum": 1, "default": 500},
    "replay_batch_size": {"type": ["integer", "null"], "minimum": 1, "default": None,
                          "description": "null: train.batch_size"},
    "stream_epochs": {"enum": ["all", "first"], "default": "all",
                      "description": "insert every epoch's batches (Mammoth) or the first only"},
    "train_replayed_heads": {"type": "boolean", "default": False},
}


def batches_per_epoch(n: int, batch_size: int, drop_last: bool = True) -> int:
    """Mirrors cmcl.train.batch_loader (drop_last only when n > batch_size)."""
    return n // batch_size if drop_last and n > batch_size else -(-n // batch_size)


@register
class ER(Strategy):
    name = "er"
    description = "experience replay: InfoNCE on a reservoir buffer of past pairs"
    citation = "Chaudhry et al. On Tiny Episodic Memories in Continual Learning. arXiv:1902.10486"
    options = {"properties": {**BUFFER_OPTIONS,
                              "weight": {"type": "number", "minimum": 0, "default": 1.0}}}
    # the replay weight and the buffer policy; the buffer's size is the shared budget
    space = {"weight": log_range(0.1, 10.0), "stream_epochs": choice("all", "first"),
             "replay_batch_size": choice(16, 32, 64), "train.lr": LR}
    budget = {"memory_size": "samples"}
    store_embeddings = False
    salt = 101  # separates this method's random streams from the data loader's

    def __init__(self, cfg: StepConfig | dict) -> None:
        super().__init__(cfg)
        self.buffer = self.empty_buffer()
        self.gen = step_generator(self.salt)
        self._pending: dict[str, torch.Tensor] | None = None
        self._left: int | None = None

    def load_state(self, directory: Path | None, model: MultiHead) -> None:
        cap = self.opts["memory_size"]
        if directory is not None and (directory / "buffer.json").exists():
            self.buffer = ReservoirBuffer.load(directory, "buffer")
            where = str(directory / "buffer.json")
            self.buffer.check_dims(model.in_dims, model.embed_dim, where)
            if (self.buffer.capacity, self.buffer.store_embeddings) != (cap, self.store_embeddings):
                raise ValueError(f"{where}: buffer has capacity {self.buffer.capacity}, "
                                 f"embeddings {self.buffer.store_embeddings}; {self.name} "
                                 f"expects {cap}, {self.store_embeddings}")
        else:
            self.buffer = self.empty_buffer()

    def empty_buffer(self) -> ReservoirBuffer:
        """Seeded from the step's torch seed (train_step sets it), then carried in the state."""
        seed = step_generator(self.salt).initial_seed()
        return ReservoirBuffer(self.opts["memory_size"], seed, self.store_embeddings)

    def save_state(self, directory: Path) -> None:
        self.buffer.save(directory, "buffer")

    def before_task(self, ctx: TaskContext) -> None:
        self.gen = step_generator(self.salt)
        bs = ctx.cfg.train.batch_size
        first = self.opts["stream_epochs"] == "first"
        drop = ctx.cfg.train.drop_last
        self._left = batches_per_epoch(len(ctx.train["labels"]), bs, drop) if first else None

    def trained(self, ctx: TaskContext) -> set[str]:
        extra = self.buffer.modalities if self.opts["train_replayed_heads"] else []
        return set(ctx.modalities) | set(extra)

    def trainable_parameters(self, ctx: TaskContext) -> list[torch.nn.Parameter]:
        return [p for m in sorted(self.trained(ctx) - set(ctx.modalities))
                for p in ctx.model.heads[m].parameters()]

    def replay_size(self, ctx: TaskContext) -> int:
        return int(self.opts["replay_batch_size"] or ctx.cfg.train.batch_size)

    def embedder(self, ctx: TaskContext):
        return lambda m, x: self.embed(ctx.model, m, x)

    def extra_loss(self, ctx: TaskContext, batch: dict, emb: dict) -> torch.Tensor | None:
        if self.store_embeddings:
            self._pending = {m: emb[m].detach() for m in ctx.modalities}
        if self.buffer.size == 0:
            return None
        return self.replay_terms(ctx)

    def replay_terms(self, ctx: TaskContext) -> torch.Tensor | None:
        batches = self.buffer.sample(self.replay_size(ctx), self.gen)
        loss = replay_loss(self.embedder(ctx), batches, ctx.cfg.loss.nce(),
                           self.trained(ctx), ctx.device)
        return None if loss is None else self.opts["weight"] * loss

    def after_optimizer_step(self, ctx: TaskContext) -> None:
        """Insert the batch just trained on (with its pre-step embeddings for DER)."""
        if ctx.batch is None or self._left == 0:
            return
        if self._left is not None:
            self._left -= 1
        a, b, g = *ctx.modalities, ctx.gather  # the global batch under data parallelism
        z = {m: g(v) for m, v in (self._pending or {}).items()}
        self.buffer.add(g(ctx.batch[a]), g(ctx.batch[b]), (a, b), g(ctx.batch["labels"]),
                        ctx.step, z.get(a), z.get(b))
