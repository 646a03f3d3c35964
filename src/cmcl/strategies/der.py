"""DER and DER++: dark experience replay (Buzzega et al. 2020), for contrastive embeddings.

The reservoir buffer keeps, with each pair, the embeddings (z_a, z_b) the model produced when
the pair was inserted (the "logits" of the paper, sampled along the optimisation trajectory).
DER adds α·MSE(current embeddings of replayed inputs, stored embeddings); DER++ also adds
β·InfoNCE on a second, independently drawn replay batch, as the authors' Mammoth code does.
MSE is on raw head outputs, the embeddings the loss normalises.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmcl.strategies import LR, TaskContext, choice, log_range, register
from cmcl.strategies.er import BUFFER_OPTIONS, ER
from cmcl.strategies.helpers.replay import ReplayBatch, replay_loss

CITATION = ("Buzzega, Boschini, Porrello, Abati, Calderara. Dark Experience for General "
            "Continual Learning: a Strong, Simple Baseline. NeurIPS 2020")


def embedding_mse(embed, batches: list[ReplayBatch], trained: set[str],
                  device: torch.device) -> torch.Tensor | None:
    """Mean squared error to the stored embeddings, both sides, groups weighted by size."""
    n = sum(len(b) for b in batches)
    total = None
    for rb in batches:
        for m in rb.pair:
            x, z = rb.x[m].to(device), rb.z[m].to(device)
            if m in trained:
                now = embed(m, x)
            else:
                with torch.no_grad():
                    now = embed(m, x)
            term = F.mse_loss(now, z) * (len(rb) / n / 2)
            total = term if total is None else total + term
    return total


@register
class DER(ER):
    name = "der"
    description = "dark experience replay: match stored embeddings of buffered pairs (MSE)"
    citation = CITATION
    options = {"properties": {**BUFFER_OPTIONS,
                              "alpha": {"type": "number", "minimum": 0, "default": 0.3}}}
    # DER's α (logit-matching weight) and the buffer policy (Buzzega et al. grid-search α)
    space = {"alpha": log_range(0.01, 10.0), "stream_epochs": choice("all", "first"),
             "train.lr": LR}
    store_embeddings = True
    salt = 202  # shared with DER++, so both draw the same first batch from the same state
    two_batches = False

    def replay_terms(self, ctx: TaskContext) -> torch.Tensor | None:
        # both draws happen whatever the weights, so the random stream never depends on them
        first = self.buffer.sample(self.replay_size(ctx), self.gen)
        second = self.buffer.sample(self.replay_size(ctx), self.gen) if self.two_batches else []
        terms = []
        if self.opts["alpha"] > 0:
            mse = embedding_mse(self.embedder(ctx), first, self.trained(ctx), ctx.device)
            if mse is not None:
                terms.append(self.opts["alpha"] * mse)
        if self.opts.get("beta", 0) > 0:
            nce = replay_loss(self.embedder(ctx), second, ctx.cfg.loss.nce(),
                              self.trained(ctx), ctx.device)
            if nce is not None:
                terms.append(self.opts["beta"] * nce)
        return sum(terms[1:], terms[0]) if terms else None


@register
class DERpp(DER):
    name = "derpp"
    description = "DER++: dark experience replay plus InfoNCE on a second replayed batch"
    citation = CITATION
    options = {"properties": {**DER.options["properties"],
                              "beta": {"type": "number", "minimum": 0, "default": 0.5}}}
    # DER++'s α and β, and the buffer policy
    space = {"alpha": log_range(0.01, 10.0), "beta": log_range(0.01, 10.0),
             "stream_epochs": choice("all", "first"), "train.lr": LR}
    two_batches = True
