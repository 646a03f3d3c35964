"""CILA: contrastive continual learning with an adaptive distillation coefficient per task.

Wen, Tan, Zheng, Xie & Huang (ICML 2024) bound the final model's loss on all tasks by the
training losses of the contrastive-plus-distillation framework of Co²L and derive from it that
the distillation coefficient should differ per task: λ_t is computed from the ratio between the
average contrastive and the average distillation losses of the previous tasks. Their full text
and code were not available here; what this file implements, precisely:

- the Co²L objective of cmcl.strategies.co2l (asymmetric SupCon with replayed past pairs as
  negatives + IRD toward the step's starting model), with the IRD weight replaced by λ_t;
- during every task with a distillation term, the per-batch values of the contrastive loss
  C (the loop's InfoNCE of the pair plus the SupCon term, both detached) and of the
  distillation D (IRD as KL) are averaged over the task's batches and stored in the state;
- at the start of task t: λ_t = base_weight · mean_k(C̄_k) / mean_k(D̄_k) over the earlier
  tasks k that had a distillation term, the ratio clipped to [1/max_ratio, max_ratio]. So λ_t
  grows when the task loss dominates the distillation (distillation too weak to matter) and
  shrinks when the distillation dominates. Before any distillation was measured (tasks 1 and 2)
  and with `adapt: false`, λ_t = base_weight (plain Co²L).
The direction of the ratio (contrastive over distillation, so that λ_t·D̄ ≈ base_weight·C̄)
and the use of averages over all earlier tasks are our reading of the abstract, not the paper's
verified formula.
"""

from __future__ import annotations

import torch

from cmcl.losses import info_nce
from cmcl.settings import StepConfig
from cmcl.strategies import LR, TaskContext, log_range, register
from cmcl.strategies.co2l import CO2L_OPTIONS, Co2L


@register
class CILA(Co2L):
    name = "cila"
    description = "CILA: Co²L with a per-task distillation weight from past loss ratios"
    citation = ("Wen, Tan, Zheng, Xie, Huang. Provable Contrastive Continual Learning. "
                "ICML 2024")
    options = {"properties": {
        **CO2L_OPTIONS,
        "base_weight": {"type": "number", "minimum": 0, "default": 1.0},
        "adapt": {"type": "boolean", "default": True},
        "max_ratio": {"type": "number", "minimum": 1, "default": 100.0},
    }}
    # Co²L's temperatures plus the base of the adaptive distillation coefficient
    space = {"temperature": log_range(0.05, 1.0), "ird_current_temperature": log_range(0.05, 1.0),
             "ird_past_temperature": log_range(0.005, 0.5), "base_weight": log_range(0.1, 10.0),
             "train.lr": LR}
    first_step_ignores = ("base_weight", "adapt", "max_ratio", "ird_current_temperature",
                          "ird_past_temperature")
    salt = 505

    def __init__(self, cfg: StepConfig | dict) -> None:
        super().__init__(cfg)
        self.history: list[dict] = []  # per past task: mean contrastive and distillation loss
        self.weight = float(self.opts["base_weight"])
        self._sums = [0.0, 0.0, 0]

    def load_extra(self, meta: dict) -> None:
        self.history = list(meta.get("history", []))

    def extra_json(self) -> dict:
        return {"history": self.history}

    def coefficient(self) -> float:
        """λ_t for the next task from the recorded averages of the earlier tasks."""
        base = float(self.opts["base_weight"])
        if not self.opts["adapt"] or not self.history:
            return base
        con = sum(h["contrastive"] for h in self.history) / len(self.history)
        dist = sum(h["distillation"] for h in self.history) / len(self.history)
        cap = float(self.opts["max_ratio"])
        ratio = cap if dist <= 0 else min(max(con / dist, 1 / cap), cap)
        return base * ratio

    def before_task(self, ctx: TaskContext) -> None:
        super().before_task(ctx)
        self.weight = self.coefficient()
        self._sums = [0.0, 0.0, 0]
        ctx.extra["cila_weight"] = self.weight

    def ird_weight(self) -> float:
        return self.weight

    def extra_loss(self, ctx: TaskContext, batch: dict, emb: dict) -> torch.Tensor | None:
        t = self.terms(ctx, batch, emb)
        loss = self.opts["supcon_weight"] * t["supcon"]
        if "ird" not in t:
            return loss
        a, b = ctx.modalities
        with torch.no_grad():
            con = info_nce(emb[a], emb[b], **ctx.cfg.loss.nce())
            con = con + self.opts["supcon_weight"] * t["supcon"]
        self._sums = [self._sums[0] + con.item(), self._sums[1] + t["ird"].item(),
                      self._sums[2] + 1]
        return loss + self.weight * t["ird"]

    def after_task(self, ctx: TaskContext) -> None:
        con, dist, n = self._sums
        if n:
            self.history.append({"task": ctx.task, "contrastive": con / n,
                                 "distillation": dist / n, "weight": self.weight})
        self._sums = [0.0, 0.0, 0]
        super().after_task(ctx)
