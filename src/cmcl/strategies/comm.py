"""COMM (Jin & Kim, arXiv 2503.08064) adapted to frozen features and per-modality heads.

COMM keeps a pretrained model frozen and learns per-modality prompt pools, a relevance router
blending the pools of related modalities, an intra-modal self-regulariser and Gaussian
pseudo-feature re-alignment (METHODS.md §6). Its text and code are not public here, so every
concrete choice below is ours:

- Prompts become residual low-rank adapters on the frozen input features: modality m owns a
  pool of P adapters A_k = U_k V_kᵀ (rank r; U_k zero-initialised, so a new pool is the
  identity and step 0 is unchanged) with keys K_k; x' = x + Σ_k w_k(x) A_k x,
  w = softmax_k(cos(x, K_k) / key_temperature). Selection is soft (differentiable) instead of
  L2P's top-N; the frozen feature itself is the query; L2P's surrogate pull
  Σ_k w_k (1 − cos(x, K_k)) (w detached, weight `key_weight`) trains the keys.
- The head W_m embeds x'. Heads train as in every method here; `train_heads: false` drops their
  gradients before the optimizer step (the literal frozen-backbone form, for identity-initialised
  heads; the loop's clipping still counts them).
- Relevance router: x' = x + Σ_j R_j(x) Δ_j(x) over the pools j of the modalities seen so far.
  `modality_identity: true` (modality-specific): R is one-hot on the input's own modality, and
  a modality without a pool (never trained) is embedded by its head alone.
  `false` (modality-agnostic): R = softmax of a small MLP (one hidden ReLU layer,
  `router_hidden`) on the normalised feature, trained by cross-entropy (`router_weight`) to
  recognise the modality of current inputs and of pseudo-features of old modalities; a new
  modality adds a zero output row. A linear router cannot separate modalities whose features
  are symmetric about the origin, hence the hidden layer. One router per input size: an adapter
  applies only to inputs of its pool's size (ImageBind: one router over every modality). R is
  detached in the blend, so it stays a relevance classifier, not bent by the contrastive loss;
  an unseen modality is routed to the pools it resembles.
- Pools (and router rows) are created in before_task for the task's modalities; in a task only
  those pools and the routers of their input sizes train, all other pools are frozen.
- Self-regulariser (`reg_weight`): for each task modality trained in an earlier step, the MSE
  between its embeddings of the current inputs and those of the frozen step-start model
  (heads + pools + routers), like LwF's embedding target; 0 until the model moves.
- Re-alignment (`realign_weight`): after each task the Gaussian memory (cmcl.strategies.pseudo)
  stores per-class mean and low-rank (`covariance_rank`) or diagonal covariance of the paired
  input features, one group per task when it has no classes (labels < 0 or ids). Each batch
  draws one past task at random and `pseudo_batch_size` pseudo pairs from it and adds their
  InfoNCE (the loop's loss options, diagonal positives). Heads outside the task enter with
  detached weights, so the gradient reaches only trainable heads, pools and routers.
- Under several processes the adapter gradients are averaged across ranks in
  before_optimizer_step (they live outside the DDP-wrapped model; the loop clips before that).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F

from cmcl.io import load_tensors, read_json, save_tensors, write_json
from cmcl.losses import info_nce
from cmcl.models import MultiHead
from cmcl.settings import StepConfig
from cmcl.strategies import LR, Strategy, TaskContext, log_range, register
from cmcl.strategies.helpers.adapters import Adapters
from cmcl.strategies.helpers.replay import step_generator
from cmcl.strategies.pseudo import GaussianMemory


@register
class COMM(Strategy):
    name = "comm"
    description = "COMM: routed per-modality adapter pools, self-regulariser, Gaussian re-alignment"
    citation = "Jin, Kim. Continual Learning for Multiple Modalities. arXiv:2503.08064"
    options = {"properties": {
        "modality_identity": {"type": "boolean", "default": True,
                              "description": "true: modality-specific; false: router infers it"},
        "pool_size": {"type": "integer", "minimum": 1, "default": 4},
        "rank": {"type": "integer", "minimum": 1, "default": 8},
        "key_temperature": {"type": "number", "exclusiveMinimum": 0, "default": 0.1},
        "key_weight": {"type": "number", "minimum": 0, "default": 0.1},
        "router_weight": {"type": "number", "minimum": 0, "default": 1.0},
        "router_hidden": {"type": "integer", "minimum": 1, "default": 64},
        "reg_weight": {"type": "number", "minimum": 0, "default": 1.0},
        "realign_weight": {"type": "number", "minimum": 0, "default": 1.0},
        "pseudo_batch_size": {"type": ["integer", "null"], "minimum": 2, "default": None,
                              "description": "null: train.batch_size"},
        "covariance": {"enum": ["lowrank", "diag"], "default": "lowrank"},
        "covariance_rank": {"type": "integer", "minimum": 1, "default": 4},
        "train_heads": {"type": "boolean", "default": True},
    }}
    # adapter rank, the self-regulariser's and the re-alignment's weights
    space = {"rank": {"type": "int", "low": 2, "high": 16, "log": True},
             "reg_weight": log_range(0.01, 10.0), "realign_weight": log_range(0.1, 10.0),
             "train.lr": LR}
    first_step_ignores = ("reg_weight", "realign_weight")
    salt = 606
    # options that shape the saved state: a reloaded state must have been built with them
    _saved = ("modality_identity", "pool_size", "rank", "router_hidden")

    def __init__(self, cfg: StepConfig | dict) -> None:
        super().__init__(cfg)
        self.reset()

    def reset(self) -> None:
        o = self.opts
        self.ad = Adapters(o["modality_identity"], o["key_temperature"], o["router_hidden"])
        self.memory = GaussianMemory(o["covariance"], o["covariance_rank"])
        self.seen: list[str] = []
        self.tasks: list[str] = []
        self.prev: Adapters | None = None
        self.prev_heads: dict[str, torch.nn.Module] = {}
        self.gen = step_generator(self.salt)

    # -- state ----------------------------------------------------------------------------
    def load_state(self, directory: Path | None, model: MultiHead) -> None:
        self.reset()
        if directory is None or not (directory / "comm.json").exists():
            return
        meta = read_json(directory / "comm.json")
        for k in self._saved:
            if meta["options"][k] != self.opts[k]:
                raise ValueError(f"{directory / 'comm.json'}: state built with {k}="
                                 f"{meta['options'][k]}, options say {self.opts[k]}")
        self.ad.restore(load_tensors(directory / "comm.safetensors"), meta["routers"])
        self.ad.check_dims(model.in_dims, str(directory / "comm.safetensors"))
        self.memory = GaussianMemory.load(directory, "pseudo")
        self.seen, self.tasks = meta["seen"], meta["tasks"]

    def save_state(self, directory: Path) -> None:
        tensors, routers = self.ad.state()
        save_tensors(directory / "comm.safetensors", tensors)
        self.memory.save(directory, "pseudo")
        write_json(directory / "comm.json", {
            "seen": self.seen, "tasks": self.tasks, "routers": routers,
            "options": {k: self.opts[k] for k in self._saved}})

    # -- forward --------------------------------------------------------------------------
    def embed(self, model: torch.nn.Module, modality: str, x: torch.Tensor) -> torch.Tensor:
        if self.ad.device not in (None, x.device):
            self.ad.to(x.device)  # evaluation after load_state: state is on the CPU
        return model(modality, self.ad.adapt(modality, x))

    def route(self, modality: str, x: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """Pools an input is routed to and their weights (rows sum to 1)."""
        return self.ad.route(modality, x)

    def trainable_parameters(self, ctx: TaskContext) -> list[torch.nn.Parameter]:
        return self.ad.trainable()

    def extra_parameters(self) -> int:
        """Every adapter pool and router tensor is trained and used at evaluation."""
        return sum(t.numel() for t in self.ad.state()[0].values())

    # -- hooks ----------------------------------------------------------------------------
    def before_task(self, ctx: TaskContext) -> None:
        self.gen = step_generator(self.salt)
        self.ad.to(ctx.device)
        self.prev = self.ad.clone() if self.seen else None
        self.prev_heads = {m: copy.deepcopy(ctx.model.heads[m]).requires_grad_(False)
                           for m in ctx.modalities if m in self.seen}
        init = step_generator(self.salt + 1)
        for m in ctx.modalities:
            self.ad.add_pool(m, ctx.model.in_dims[m], self.opts["pool_size"], self.opts["rank"],
                             init, ctx.device)
        self.ad.set_trainable(ctx.modalities)

    def _embed_fixed_heads(self, ctx: TaskContext, m: str, x: torch.Tensor) -> torch.Tensor:
        """Embedding whose gradient reaches the adapters, and a head only if it trains now."""
        xa = self.ad.adapt(m, x)
        head = ctx.model.heads[m]
        if m in ctx.modalities:
            return head(xa)
        bias = None if head.bias is None else head.bias.detach()
        return F.linear(xa, head.weight.detach(), bias)

    def terms(self, ctx: TaskContext, batch: dict, emb: dict) -> dict[str, torch.Tensor]:
        a, b = ctx.modalities
        out = {"key": (self.ad.key_loss(a, batch[a]) + self.ad.key_loss(b, batch[b])) / 2}
        routed = [(batch[a], a), (batch[b], b)]
        if len(self.memory):
            i = int(torch.randint(len(self.memory), (1,), generator=self.gen))
            bs = int(self.opts["pseudo_batch_size"] or ctx.cfg.train.batch_size)
            pa, pb = self.memory.entries[i]["pair"]
            xa, xb, _ = self.memory.sample(i, bs, self.gen)
            xa, xb = xa.to(ctx.device), xb.to(ctx.device)
            out["realign"] = info_nce(self._embed_fixed_heads(ctx, pa, xa),
                                      self._embed_fixed_heads(ctx, pb, xb),
                                      **ctx.cfg.loss.nce())
            routed += [(xa, pa), (xb, pb)]
        router = self.ad.router_loss(routed)
        if router is not None:
            out["router"] = router
        if self.prev is not None and self.prev_heads:
            regs = []
            for m, head in self.prev_heads.items():
                with torch.no_grad():
                    old = head(self.prev.adapt(m, batch[m]))
                regs.append(F.mse_loss(emb[m], old))
            out["reg"] = sum(regs[1:], regs[0]) / len(regs)
        return out

    def extra_loss(self, ctx: TaskContext, batch: dict, emb: dict) -> torch.Tensor | None:
        t = self.terms(ctx, batch, emb)
        return sum(self.opts[f"{k}_weight"] * v for k, v in t.items())

    def before_optimizer_step(self, ctx: TaskContext) -> None:
        # (adapter gradients are already averaged over processes by the training loop)
        if not self.opts["train_heads"]:
            for m in ctx.modalities:
                for p in ctx.model.heads[m].parameters():
                    p.grad = None

    def after_task(self, ctx: TaskContext) -> None:
        """Summarise the task's features as Gaussians; the task's modalities are now seen."""
        a, b = ctx.modalities
        self.memory.add_task(ctx.step, ctx.task, (a, b), ctx.train[a], ctx.train[b],
                             ctx.train["labels"], step_generator(self.salt + 2))
        self.seen += [m for m in (a, b) if m not in self.seen]
        self.tasks.append(ctx.task)
        self.prev, self.prev_heads = None, {}
        ctx.extra["comm_pools"] = sorted(self.ad.pools)
        ctx.extra["comm_pseudo_groups"] = len(self.memory.entries[-1]["groups"])

