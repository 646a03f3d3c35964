"""Online EWC: a diagonal-Fisher quadratic anchor to the previous task's weights.

Kirkpatrick et al. (2017) with the online accumulation of Schwarz et al. (2018): after each
task, F_t is the mean over the task's train batches of the squared gradient of the task's
InfoNCE (the empirical Fisher of a contrastive loss, which has no per-sample likelihood), and
F <- γF + F_t. The penalty λ/2 Σ F (θ - θ*)² pulls the heads trained now toward θ*, their
weights at the end of the previous task. Batch gradients are smaller than per-sample ones by
about the batch size, so λ must be tuned to this Fisher's scale rather than copied from papers.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cmcl.io import load_tensors, read_json, save_tensors, write_json
from cmcl.losses import info_nce
from cmcl.models import MultiHead
from cmcl.settings import StepConfig
from cmcl.strategies import LR, Strategy, TaskContext, log_range, register
from cmcl.strategies.helpers.replay import step_generator


def head_params(model: MultiHead, modalities) -> dict[str, torch.nn.Parameter]:
    """Parameters of the given heads under their state_dict names (the keys saved)."""
    return {f"heads.{m}.{n}": p for m in modalities for n, p in model.heads[m].named_parameters()}


@register
class EWC(Strategy):
    name = "ewc"
    description = "online EWC: diagonal-Fisher penalty toward the previous task's weights"
    citation = ("Kirkpatrick et al. Overcoming catastrophic forgetting in neural networks. PNAS "
                "2017; Schwarz et al. Progress & Compress. ICML 2018 (online variant)")
    options = {"properties": {
        "lambda": {"type": "number", "minimum": 0, "default": 100.0},
        "gamma": {"type": "number", "minimum": 0, "maximum": 1, "default": 1.0},
    }}
    # λ (the scale of this batch-gradient Fisher is not the papers'), P&C's online decay γ
    space = {"lambda": log_range(1.0, 1e5),
             "gamma": {"type": "float", "low": 0.5, "high": 1.0}, "train.lr": LR}

    def __init__(self, cfg: StepConfig | dict) -> None:
        super().__init__(cfg)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        self.tasks: list[str] = []

    def load_state(self, directory: Path | None, model: MultiHead) -> None:
        if directory is None or not (directory / "ewc.json").exists():
            self.fisher, self.anchor, self.tasks = {}, {}, []
            return
        self.tasks = read_json(directory / "ewc.json")["tasks"]
        t = load_tensors(directory / "ewc.safetensors")
        own = model.state_dict()
        self.fisher = {k[7:]: v for k, v in t.items() if k.startswith("fisher/")}
        self.anchor = {k[7:]: v for k, v in t.items() if k.startswith("anchor/")}
        for k, v in self.fisher.items():
            if k not in own or own[k].shape != v.shape or self.anchor[k].shape != v.shape:
                raise ValueError(f"{directory / 'ewc.safetensors'}: '{k}' does not match the "
                                 f"model ({tuple(v.shape)} vs {tuple(own.get(k, v).shape)})")

    def save_state(self, directory: Path) -> None:
        tensors = {f"fisher/{k}": v for k, v in self.fisher.items()}
        tensors |= {f"anchor/{k}": v for k, v in self.anchor.items()}
        save_tensors(directory / "ewc.safetensors", tensors)
        write_json(directory / "ewc.json", {"tasks": self.tasks, "keys": sorted(self.fisher)})

    def penalty(self, model: MultiHead, modalities) -> torch.Tensor | None:
        """λ/2 Σ F (θ - θ*)² over the given heads (other heads do not move this step)."""
        total = None
        for k, p in head_params(model, modalities).items():
            if k in self.fisher:
                f, a = self.fisher[k].to(p.device), self.anchor[k].to(p.device)
                term = (f * (p - a) ** 2).sum()
                total = term if total is None else total + term
        return None if total is None else self.opts["lambda"] / 2 * total

    def extra_loss(self, ctx: TaskContext, batch: dict, emb: dict) -> torch.Tensor | None:
        return self.penalty(ctx.model, ctx.modalities)

    def task_fisher(self, ctx: TaskContext) -> dict[str, torch.Tensor]:
        """Mean squared batch gradient of the task's loss over its train data."""
        a, b = ctx.modalities
        params = head_params(ctx.model, ctx.modalities)
        lc, bs = ctx.cfg.loss.nce(), ctx.cfg.train.batch_size
        n = len(ctx.train[a])
        order = torch.randperm(n, generator=step_generator(303)).to(ctx.device)
        out = {k: torch.zeros_like(p) for k, p in params.items()}
        starts = range(0, n - bs + 1, bs) if n > bs else [0]  # full batches, as in training
        with torch.enable_grad():
            for i in starts:
                idx = order[i: i + bs]
                za = self.embed(ctx.model, a, ctx.train[a][idx])
                zb = self.embed(ctx.model, b, ctx.train[b][idx])
                grads = torch.autograd.grad(info_nce(za, zb, **lc), list(params.values()))
                for k, g in zip(params, grads, strict=True):
                    out[k] += g.detach() ** 2
        return {k: v / len(starts) for k, v in out.items()}

    def after_task(self, ctx: TaskContext) -> None:
        f_t = self.task_fisher(ctx)
        gamma = self.opts["gamma"]
        self.fisher = {k: gamma * v for k, v in self.fisher.items()}
        for k, v in f_t.items():
            self.fisher[k] = self.fisher[k] + v.cpu() if k in self.fisher else v.cpu()
        own = ctx.model.state_dict()
        self.anchor = {k: own[k].detach().cpu().clone() for k in self.fisher}
        self.tasks.append(ctx.task)
