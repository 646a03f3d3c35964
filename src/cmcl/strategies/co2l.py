"""Co²L: asymmetric supervised contrastive learning plus instance-wise relation distillation.

Cha, Lee & Shin (2021) train a representation with (1) a supervised contrastive loss whose
*anchors* are only current-task samples while replayed past samples act only as negatives, so
old classes are pushed away without being re-learned from a tiny buffer, and (2) instance-wise
relation distillation (IRD): the distribution of each sample's similarities to the rest of the
batch under the current model is pulled toward the same distribution under the model the task
started from.

Adaptation to the cross-modal, frozen-feature setting (choices the paper could not make):
- the two modalities of a pair are the two "views" of SupCon: the contrast set is the 2N
  current embeddings z_a, z_b plus both embeddings of M replayed past pairs (2M negatives);
- positives of an anchor are the other current embeddings with the same class label, or, for
  samples without a class (label < 0), only the paired embedding of the other modality. A past
  sample is never an anchor and never a positive, whatever its label: labels of different tasks
  share integers, so a label match across tasks means nothing;
- the loop's InfoNCE of the current pair stays; SupCon is added to it (`supcon_weight`); SupCon
  and IRD work on L2-normalised embeddings, as Co²L's projection head does; the SupCon
  temperature/base-temperature factor of the SupContrast code is folded into the weight;
- IRD runs over the same contrast set (current + replayed, self-similarity removed) and is
  reported as KL(p_past || p_now): Co²L's code uses the cross-entropy, which differs by the
  entropy of p_past, a constant, so the gradient is the same but the value is 0 when the model
  has not moved (with equal temperatures; with the paper's κ* < κ the target is sharper);
- the buffer is a reservoir sample of all past tasks' pairs (Co²L keeps a class-balanced random
  subset of past tasks), filled at the end of each task, so during a task it holds only the past;
- the past model is a frozen copy of every head at the start of the step. IRD starts with the
  second task; replayed pairs of modalities outside the task are embedded without a graph.
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
from cmcl.strategies.helpers.replay import ReservoirBuffer, step_generator

CITATION = "Cha, Lee, Shin. Co2L: Contrastive Continual Learning. ICCV 2021"

CO2L_OPTIONS = {
    "memory_size": {"type": "integer", "minimum": 1, "default": 500},
    "replay_batch_size": {"type": ["integer", "null"], "minimum": 1, "default": None,
                          "description": "past pairs per batch; null: train.batch_size"},
    "supcon_weight": {"type": "number", "minimum": 0, "default": 1.0},
    "temperature": {"type": "number", "exclusiveMinimum": 0, "default": 0.5,
                    "description": "asymmetric SupCon temperature τ"},
    "ird_current_temperature": {"type": "number", "exclusiveMinimum": 0, "default": 0.2},
    "ird_past_temperature": {"type": "number", "exclusiveMinimum": 0, "default": 0.01},
}


def asym_supcon(z: torch.Tensor, keys: torch.Tensor, anchor: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """SupCon over the rows of z with anchors (and positives) restricted to `anchor` rows.

    Row i's positives: rows j != i with anchor[j] and keys[j] == keys[i]. Non-anchor rows only
    enlarge the denominators (negatives); their keys are never read.
    """
    z = F.normalize(z, dim=-1)
    idx = torch.nonzero(anchor)[:, 0]
    sim = z[idx] @ z.T / temperature
    own = torch.zeros_like(sim, dtype=torch.bool)
    own[torch.arange(len(idx), device=z.device), idx] = True
    log_prob = sim.masked_fill(own, float("-inf"))
    log_prob = log_prob - torch.logsumexp(log_prob, dim=1, keepdim=True)
    pos = (keys[idx, None] == keys[None, :]) & anchor[None, :] & ~own
    rows = pos.any(1)
    mean_pos = log_prob.masked_fill(~pos, 0).sum(1)[rows] / pos.sum(1)[rows]
    return -mean_pos.mean()


def relation_log_probs(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """Row-wise log-softmax of cosine similarities to the other rows (self removed), (n, n-1)."""
    z = F.normalize(z, dim=-1)
    s = z @ z.T / temperature
    n = len(s)
    s = s[~torch.eye(n, dtype=torch.bool, device=s.device)].view(n, n - 1)
    return F.log_softmax(s, dim=1)


def ird(z_now: torch.Tensor, z_past: torch.Tensor, t_now: float, t_past: float) -> torch.Tensor:
    """Instance-wise relation distillation, KL(p_past || p_now) averaged over rows."""
    with torch.no_grad():
        target = relation_log_probs(z_past, t_past)
    return F.kl_div(relation_log_probs(z_now, t_now), target, reduction="batchmean",
                    log_target=True)


def sample_keys(labels: torch.Tensor) -> torch.Tensor:
    """Positive keys: the class where there is one (>= 0), else a unique per-sample key."""
    own = -1 - torch.arange(len(labels), device=labels.device)
    return torch.where(labels >= 0, labels.to(torch.int64), own)


@register
class Co2L(Strategy):
    name = "co2l"
    description = "Co²L: asymmetric SupCon (past pairs only as negatives) + relation distillation"
    citation = CITATION
    options = {"properties": {**CO2L_OPTIONS,
                              "ird_weight": {"type": "number", "minimum": 0, "default": 1.0}}}
    # Co²L's tuned knobs: SupCon τ, the IRD temperatures and the distillation weight
    space = {"temperature": log_range(0.05, 1.0), "ird_current_temperature": log_range(0.05, 1.0),
             "ird_past_temperature": log_range(0.005, 0.5), "ird_weight": log_range(0.1, 10.0),
             "train.lr": LR}
    budget = {"memory_size": "samples"}
    first_step_ignores = ("ird_weight", "ird_current_temperature", "ird_past_temperature")
    salt = 404

    def __init__(self, cfg: StepConfig | dict) -> None:
        super().__init__(cfg)
        self.buffer = self.empty_buffer()
        self.gen = step_generator(self.salt)
        self.past: MultiHead | None = None
        self.tasks: list[str] = []

    def empty_buffer(self) -> ReservoirBuffer:
        return ReservoirBuffer(self.opts["memory_size"], step_generator(self.salt).initial_seed())

    # -- state ----------------------------------------------------------------------------
    def load_state(self, directory: Path | None, model: MultiHead) -> None:
        if directory is None or not (directory / "buffer.json").exists():
            self.buffer, self.tasks = self.empty_buffer(), []
            self.load_extra({})
            return
        self.buffer = ReservoirBuffer.load(directory, "buffer")
        where = str(directory / "buffer.json")
        self.buffer.check_dims(model.in_dims, model.embed_dim, where)
        if self.buffer.capacity != self.opts["memory_size"]:
            raise ValueError(f"{where}: buffer has capacity {self.buffer.capacity}; "
                             f"{self.name} expects memory_size {self.opts['memory_size']}")
        meta = read_json(directory / f"{self.name}.json")
        self.tasks = meta["tasks"]
        self.load_extra(meta)

    def load_extra(self, meta: dict) -> None:
        """Subclasses restore their own JSON fields here."""

    def save_state(self, directory: Path) -> None:
        self.buffer.save(directory, "buffer")
        write_json(directory / f"{self.name}.json", {"tasks": self.tasks, **self.extra_json()})

    def extra_json(self) -> dict:
        return {}

    # -- hooks ----------------------------------------------------------------------------
    def before_task(self, ctx: TaskContext) -> None:
        self.gen = step_generator(self.salt)
        self.past = None
        if self.tasks:
            self.past = copy.deepcopy(ctx.model).requires_grad_(False).eval()

    def ird_weight(self) -> float:
        return float(self.opts["ird_weight"])

    def terms(self, ctx: TaskContext, batch: dict, emb: dict) -> dict[str, torch.Tensor]:
        """The method's loss terms on this batch: 'supcon' always, 'ird' once there is a past."""
        a, b = ctx.modalities
        n = len(batch[a])
        now = [emb[a], emb[b]]
        past_now, past_old = [], []
        if self.buffer.size:
            bs = int(self.opts["replay_batch_size"] or ctx.cfg.train.batch_size)
            for rb in self.buffer.sample(bs, self.gen):
                for m in rb.pair:
                    x = rb.x[m].to(ctx.device)
                    with torch.set_grad_enabled(m in ctx.modalities and torch.is_grad_enabled()):
                        past_now.append(self.embed(ctx.model, m, x))
                    if self.past is not None:
                        with torch.no_grad():
                            past_old.append(self.embed(self.past, m, x))
        z = torch.cat(now + past_now)
        keys = sample_keys(batch["labels"].to(z.device)).repeat(2)
        keys = torch.cat([keys, keys.new_zeros(len(z) - 2 * n)])  # past keys: never read
        anchor = torch.arange(len(z), device=z.device) < 2 * n
        out = {"supcon": asym_supcon(z, keys, anchor, self.opts["temperature"])}
        if self.past is not None:
            with torch.no_grad():
                old = [self.embed(self.past, m, batch[m]) for m in (a, b)]
            out["ird"] = ird(z, torch.cat(old + past_old), self.opts["ird_current_temperature"],
                             self.opts["ird_past_temperature"])
        return out

    def extra_loss(self, ctx: TaskContext, batch: dict, emb: dict) -> torch.Tensor | None:
        t = self.terms(ctx, batch, emb)
        loss = self.opts["supcon_weight"] * t["supcon"]
        return loss + self.ird_weight() * t["ird"] if "ird" in t else loss

    def after_task(self, ctx: TaskContext) -> None:
        """Put the finished task into the past: its pairs into the reservoir, its model away."""
        a, b = ctx.modalities
        self.buffer.add(ctx.train[a], ctx.train[b], (a, b), ctx.train["labels"], ctx.step)
        self.tasks.append(ctx.task)
        self.past = None
