"""LwF for contrastive heads: distil the previous model's behaviour on the current data.

Li & Hoiem (2017) keep the old network's outputs on new inputs. Here the "outputs" are (a) the
batch's similarity distributions, softmax over rows of z_a z_bᵀ (the InfoNCE logits, divided
by the distillation temperature), and/or (b) the embeddings themselves. The old model is the
step's starting weights, which are the previous step's model, copied in before_task, so only
the tasks and modalities seen are saved. The first task has no previous task and no term. The
term is exactly 0 while the heads are unchanged: both sides come from identical computations.

heads "seen" (default) distils only heads trained in an earlier task: a head met for the
first time is still its random init, and matching its similarities would stop it learning the
new task (measured: worse than fine-tuning on both old and new pairs). When only one head of
the pair was seen, the similarity term uses that head's within-batch similarities (diagonal
removed) instead of the cross-modal ones. heads "all" distils both heads as they are, the
literal form, sensible when step 0 is already aligned (identity heads on ImageBind features).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F

from cmcl.io import read_json, write_json
from cmcl.models import MultiHead
from cmcl.settings import StepConfig
from cmcl.strategies import LR, Strategy, TaskContext, log_range, register


def logits(za: torch.Tensor, zb: torch.Tensor, lc: dict) -> torch.Tensor:
    if lc["normalize"]:
        za, zb = F.normalize(za, dim=-1), F.normalize(zb, dim=-1)
    return za @ zb.T / lc["temperature"]


def self_logits(z: torch.Tensor, lc: dict) -> torch.Tensor:
    """Within-batch similarities without the diagonal (n, n - 1): self-match carries nothing."""
    s = logits(z, z, lc)
    n = len(s)
    return s[~torch.eye(n, dtype=torch.bool, device=s.device)].view(n, n - 1)


@register
class LwF(Strategy):
    name = "lwf"
    description = "learning without forgetting: distil the previous model's similarities"
    citation = "Li, Hoiem. Learning without Forgetting. TPAMI 2017"
    options = {"properties": {
        "alpha": {"type": "number", "minimum": 0, "default": 1.0},
        "temperature": {"type": "number", "exclusiveMinimum": 0, "default": 2.0},
        "target": {"enum": ["similarity", "embedding", "both"], "default": "similarity"},
        "distance": {"enum": ["kl", "mse"], "default": "kl",
                     "description": "between old and new similarity distributions"},
        "heads": {"enum": ["seen", "all"], "default": "seen",
                  "description": "distil only heads trained in an earlier task, or all"},
    }}
    # the distillation weight and temperature (LwF's λ_o and T)
    space = {"alpha": log_range(0.1, 10.0), "temperature": log_range(0.5, 8.0), "train.lr": LR}

    def __init__(self, cfg: StepConfig | dict) -> None:
        super().__init__(cfg)
        self.tasks: list[str] = []
        self.seen: list[str] = []
        self.old: dict[str, torch.nn.Module] = {}

    def load_state(self, directory: Path | None, model: MultiHead) -> None:
        path = None if directory is None else directory / "lwf.json"
        state = read_json(path) if path is not None and path.exists() else {}
        self.tasks, self.seen = state.get("tasks", []), state.get("modalities", [])

    def save_state(self, directory: Path) -> None:
        write_json(directory / "lwf.json", {"tasks": self.tasks, "modalities": self.seen})

    def before_task(self, ctx: TaskContext) -> None:
        self.old = {}
        if self.tasks:
            self.old = {m: copy.deepcopy(ctx.model.heads[m]).requires_grad_(False)
                        for m in ctx.modalities}

    def _match(self, new: torch.Tensor, old: torch.Tensor, both_ways: bool) -> torch.Tensor:
        """Distance between old and new row distributions of temperature-scaled logits."""
        t = self.opts["temperature"]
        pairs = [(new / t, old / t)] + ([(new.T / t, old.T / t)] if both_ways else [])
        terms = []
        for sn, so in pairs:
            if self.opts["distance"] == "kl":
                terms.append(F.kl_div(F.log_softmax(sn, 1), F.log_softmax(so, 1),
                                      reduction="batchmean", log_target=True))
            else:
                terms.append(F.mse_loss(sn.softmax(1), so.softmax(1)))
        return sum(terms[1:], terms[0]) / len(terms)

    def distillation(self, ctx: TaskContext, batch: dict, emb: dict) -> torch.Tensor | None:
        a, b = ctx.modalities
        keep = [m for m in (a, b) if m in self.old
                and (self.opts["heads"] == "all" or m in self.seen)]
        if not keep or len(batch[a]) < 2:
            return None
        with torch.no_grad():
            old = {m: self.old[m](batch[m]) for m in keep}
        terms = []
        if self.opts["target"] in ("similarity", "both"):
            lc = ctx.cfg.loss.nce()
            if len(keep) == 2:
                terms.append(self._match(logits(emb[a], emb[b], lc), logits(old[a], old[b], lc),
                                         lc["symmetric"]))
            else:
                m = keep[0]
                terms.append(self._match(self_logits(emb[m], lc), self_logits(old[m], lc), False))
        if self.opts["target"] in ("embedding", "both"):
            terms.append(sum(F.mse_loss(emb[m], old[m]) for m in keep) / len(keep))
        return self.opts["alpha"] * sum(terms[1:], terms[0])

    def extra_loss(self, ctx: TaskContext, batch: dict, emb: dict) -> torch.Tensor | None:
        return self.distillation(ctx, batch, emb)

    def after_task(self, ctx: TaskContext) -> None:
        self.tasks.append(ctx.task)
        self.seen += [m for m in ctx.modalities if m not in self.seen]
        self.old = {}
