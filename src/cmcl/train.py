"""One continual-learning step under Accelerate: load step t-1, train on task t, save step t.

The loop is written out top to bottom (nanoGPT style); methods act only through the hooks of
cmcl.strategies. The same code runs as `python -m cmcl train` on one CPU and under
`accelerate launch -m cmcl train` on N GPUs.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedType
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cmcl.io import (
    DIGESTS,
    atomic_dir,
    read_json,
    record_digests,
    save_tensors,
    write_json,
)
from cmcl.lean import defer_dynamo, set_seed  # no dynamo import: ~1 s of CPU a job
from cmcl.losses import gather_with_grad, info_nce
from cmcl.models import MultiHead
from cmcl.resume import (
    Resume,
    find_checkpoint,
    fingerprint,
    load_checkpoint,
    resume_dir,
    save_checkpoint,
    say,
)
from cmcl.settings import ModelSettings, StepConfig, TrainSettings
from cmcl.shards import read_features
from cmcl.steps import (  # noqa: F401  (re-exported: the training API)
    load_model,
    load_state_dir,
    load_strategy,
    weights_digest,
)
from cmcl.strategies import Strategy, TaskContext, get_strategy


class BatchTensors(Dataset):
    """Rows of equal-length tensors, fetched one whole batch at a time.

    DataLoader hands `__getitems__` the sampler's list of indices, so a batch is one gather per
    tensor instead of per-sample indexing plus default collation (about 1 ms a step at batch
    64). Sampler, order and contents are those of DataLoader(TensorDataset(...)).
    """

    def __init__(self, *tensors: torch.Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[i] for t in self.tensors)

    def __getitems__(self, idx: list[int]) -> list[torch.Tensor]:
        rows = torch.as_tensor(idx)
        return [t[rows] for t in self.tensors]


def batch_loader(tensors: tuple[torch.Tensor, ...], batch_size: int,
                 gen: torch.Generator, drop_last: bool = True) -> DataLoader:
    """Shuffled batches from `gen`; with `drop_last` the last partial batch is dropped unless it
    is the only one (the Hugging Face Trainer keeps it: `train.drop_last: false`)."""
    return DataLoader(BatchTensors(*tensors), batch_size=batch_size, shuffle=True,
                      generator=gen, drop_last=drop_last and len(tensors[0]) > batch_size,
                      collate_fn=_as_is)


def lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    """Multiplier of train.lr at optimizer step `step` (0-based) of `total` in one task.

    The formulas of transformers' get_scheduler ("constant_with_warmup", "linear", "cosine"),
    which the Hugging Face Trainer (the DNS authors' loop) applies per `trainer.train()` call,
    i.e. per task; tests compare against that function. Computed from the step count alone,
    so a resumed step needs no scheduler state.
    """
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"train.lr_schedule: unknown schedule {schedule!r} "
                     "(constant, linear, cosine)")


def warmup_steps(tc: TrainSettings, total: int) -> int:
    """train.warmup_steps, or train.warmup_fraction of the task's steps rounded up (as HF)."""
    if tc.warmup_fraction:
        return math.ceil(total * tc.warmup_fraction)
    return int(tc.warmup_steps)


def param_groups(params: list[torch.nn.Parameter], weight_decay: float,
                 decay_biases: bool) -> list[dict]:
    """AdamW groups: one, or (as the HF Trainer) no weight decay on biases and norm weights,
    i.e. on every parameter of fewer than 2 dimensions."""
    if decay_biases:
        return [{"params": params, "weight_decay": weight_decay}]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _as_is(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    """The batch is already gathered (BatchTensors.__getitems__): nothing to collate."""
    return batch


def step_seed(seed: int, step: int) -> int:
    """The seed of training step `step` of a run seeded `seed`: the pipeline's and sweeps'."""
    return seed * 1000 + step


def make_accelerator(tc: TrainSettings | dict) -> Accelerator:
    """One Accelerator setup for every entry point: `train.batch_size` is the *global* batch,
    split across processes, so N processes train exactly like one (same batches, same order)."""
    accel = torch.cuda.is_available() or torch.backends.mps.is_available() or (
        hasattr(torch, "xpu") and torch.xpu.is_available())
    # cpu=True on a CPU-only host is what makes Accelerate join a torchrun group (gloo)
    return Accelerator(cpu=TrainSettings.of(tc).cpu or not accel,
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


def new_model(mc: ModelSettings, in_dims: dict[str, int], seed: int) -> MultiHead:
    """The untrained heads of a run (model section `mc`): its step 0, in files or in memory."""
    model = MultiHead(in_dims, mc.embed_dim, mc.bias)
    model.reset(mc.init, seed)
    return model


def init_step(cfg: StepConfig | dict, method: str, seed: int, feature_dirs: list[str | Path],
              out_dir: str | Path) -> None:
    """Step 0: the untrained model every run starts from (its evaluation is the zero-shot row)."""
    in_dims: dict[str, int] = {}
    for d in feature_dirs:
        for m, dim in read_json(Path(d) / "meta.json")["dims"].items():
            if in_dims.setdefault(m, dim) != dim:
                raise ValueError(f"{d}/meta.json: modality '{m}' has dim {dim}, another task "
                                 f"has {in_dims[m]}: one encoder per modality is required")
    cfg = StepConfig.of(cfg)  # a partial dict (library callers): the schema's defaults
    odd = {m: d for m, d in in_dims.items() if d != cfg.model.embed_dim}
    if cfg.model.init == "identity" and odd:  # else reset() would fall back to random rows
        raise ValueError(f"model.init identity starts each head as the identity, which needs "
                         f"model.embed_dim ({cfg.model.embed_dim}) equal to the features' dim; "
                         f"{odd} differ: set model.embed_dim to it or model.init: orthogonal")
    model = new_model(cfg.model, in_dims, seed)
    base = cfg.method or method  # a variant names the method it runs
    with atomic_dir(out_dir) as tmp:
        save_tensors(tmp / "model.safetensors", model.state_dict())
        opts = get_strategy(base, cfg).opts
        write_json(tmp / "meta.json", {"step": 0, "task": None, "method": base, "run": method,
                                       "seed": seed, "options": opts,
                                       "model": model.config(), "tasks_seen": [],
                                       "log": {"final_digest": weights_digest(model)},
                                       DIGESTS: record_digests(tmp)})


def fit_task(model: MultiHead, strategy: Strategy, cfg: StepConfig | dict, task: dict,
             step: int, seed: int, xa: torch.Tensor, xb: torch.Tensor, labels: torch.Tensor,
             acc: Accelerator | None = None) -> tuple[MultiHead, dict]:
    """The training loop of one task on in-memory features; returns the unwrapped model and log.

    Usable without any files (tests, sweeps): the strategy's state must already be loaded.
    """
    return fit_tasks(model, strategy, cfg, [(task, xa, xb, labels)], step, seed, acc)


def fit_tasks(model: MultiHead, strategy: Strategy, cfg: StepConfig | dict, parts: list[tuple],
              step: int, seed: int, acc: Accelerator | None = None,
              resume: Resume | None = None) -> tuple[MultiHead, dict]:
    """Train on one or more (task, xa, xb, labels) parts; several parts = joint training.

    Every batch comes from one task (its own modality pair); with several parts the batches of
    all tasks are interleaved in a seeded random order, so joint training sees the union.
    With `resume`, a checkpoint is saved every `resume.every` optimizer steps and training
    continues from the newest matching one (cmcl.resume).
    """
    cfg = StepConfig.of(cfg)  # a partial dict (library callers): the schema's defaults
    tc = cfg.train
    acc = acc or make_accelerator(tc)
    model = model.to(acc.device)
    gen = torch.Generator().manual_seed(step_seed(seed, step))
    ctxs, mods = [], []
    for task, xa, xb, labels in parts:
        a, b = task["modalities"]
        mods += [m for m in (a, b) if m not in mods]
        ctxs.append(TaskContext(step, task["name"], (a, b), model,
                                {a: xa.to(acc.device), b: xb.to(acc.device),
                                 "labels": labels.to(acc.device)}, cfg, acc.device,
                                gather=acc.gather if acc.num_processes > 1 else lambda t: t))
    ctx = ctxs[0]
    strategy.before_task(ctx)
    # built after before_task so train_inputs can use what it set up; building a loader draws
    # nothing from `gen`, so the shuffling is the same as when they were built first
    loaders = []
    for c, (_, xa, xb, labels) in zip(ctxs, parts, strict=True):
        a, b = c.modalities
        check_partial_batch(len(xa), tc, acc.num_processes, c.task)
        loaders.append(batch_loader((strategy.train_inputs(c, a, xa),
                                     strategy.train_inputs(c, b, xb), labels),
                                    tc.batch_size, gen, tc.drop_last))
    params = [p for m in mods for p in model.heads[m].parameters()]
    extra_params = strategy.trainable_parameters(ctx)
    params += extra_params
    defer_dynamo(torch.optim.Optimizer, torch.optim.Adam, torch.optim.AdamW)  # ~1 s a job
    opt = torch.optim.AdamW(param_groups(params, tc.weight_decay, tc.decay_biases),
                            lr=tc.lr, weight_decay=tc.weight_decay)
    # the model's placement given, as Accelerate would decide it: its default imports
    # torch.distributed.tensor (~0.5 s a job) to look for DTensor parameters MultiHead never has
    custom = acc.distributed_type not in (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM)
    place = [acc.device_placement and acc.distributed_type != DistributedType.FSDP,
             *[None] * (1 + len(loaders))] if custom else None
    # DDP reduces the gradient of every parameter that requires one and waits for all of them;
    # a task trains only its modalities' heads, so the others sit out of this task's wrapper
    idle = [p for m, h in model.heads.items() if m not in mods for p in h.parameters()
            if p.requires_grad] if acc.num_processes > 1 else []
    for p in idle:
        p.requires_grad_(False)
    wrapped, opt, *loaders = acc.prepare(model, opt, *loaders, device_placement=place)
    if acc.scaler is None and acc.distributed_type != DistributedType.XLA:
        # the wrapper only adds loss scaling and XLA syncing, yet looks up an optional package
        # and a signature on every call (0.3 ms a step): step the torch optimizer it wraps
        opt = opt.optimizer
    # Accelerate's clip imports torch.distributed.tensor (~0.5 s a job) to look for DTensor
    # gradients; without loss scaling, FSDP, DeepSpeed or XLA it is torch's own clip_grad_norm_
    plain = acc.scaler is None and acc.distributed_type not in (
        DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.XLA)
    clip = torch.nn.utils.clip_grad_norm_ if plain else acc.clip_grad_norm_
    lc = cfg.loss.nce()

    def loss_fn(batch: dict) -> torch.Tensor:
        a, b = ctx.modalities
        emb = {m: strategy.embed(wrapped, m, batch[m]) for m in (a, b)}
        # every rank computes the global-batch loss; DDP averages gradients over ranks, so
        # scaling by the process count gives the gradient of one process on the whole batch
        loss = info_nce(gather_with_grad(acc, emb[a]), gather_with_grad(acc, emb[b]), **lc)
        loss = loss * acc.num_processes
        extra = strategy.extra_loss(ctx, batch, emb)
        return loss if extra is None else loss + extra

    name = "+".join(c.task for c in ctxs)
    at = {"epoch": 0, "done": 0, "global_step": 0, "losses": [], "total": 0.0, "n": 0,
          "seconds": 0.0}  # where the loop is: what a checkpoint records
    ckpt = resume and find_checkpoint(resume.root, resume.fingerprint, acc.num_processes)
    if ckpt:
        at, epoch_gen = load_checkpoint(acc, ckpt, strategy)
        gen.set_state(epoch_gen)  # the shuffling of the saved epoch is replayed up to `done`
        say(f"step {step}: resuming from {ckpt} (epoch {at['epoch']}, batch {at['done']})")
    steps_per_epoch = sum(len(ld) for ld in loaders)
    schedule, total_steps = tc.lr_schedule, tc.epochs * steps_per_epoch
    warmup = warmup_steps(tc, total_steps)
    scheduled = schedule != "constant" or warmup > 0
    losses, t0 = at["losses"], time.time() - at["seconds"]  # `losses` is at["losses"]
    wrapped.train()
    for epoch in tqdm(range(at["epoch"], tc.epochs), initial=at["epoch"], total=tc.epochs,
                      desc=f"step {step} {name} [{strategy.name}]",
                      disable=not acc.is_local_main_process):
        epoch_gen = gen.get_state()
        order = [i for i, ld in enumerate(loaders) for _ in range(len(ld))]
        order = [order[j] for j in torch.randperm(len(order), generator=gen)] if len(parts) > 1 \
            else order
        iters = [iter(ld) for ld in loaders]
        skip = at["done"] if epoch == at["epoch"] else 0  # batches trained before a checkpoint
        total, n = (at["total"], at["n"]) if skip else (0.0, 0)
        for done, i in enumerate(order, 1):
            xa_b, xb_b, y_b = next(iters[i])
            if done <= skip:
                continue
            ctx = ctxs[i]
            ctx.loss_fn, ctx.epoch = loss_fn, epoch
            ctx.batch = {ctx.modalities[0]: xa_b, ctx.modalities[1]: xb_b, "labels": y_b}
            loss = loss_fn(ctx.batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"step {step} ({ctx.task}, {strategy.name}): loss "
                                         f"is {loss.item()} at epoch {epoch}; lower train.lr")
            acc.backward(loss)
            if acc.num_processes > 1:  # method parameters live outside the DDP-wrapped model
                for p in extra_params:
                    if p.grad is not None:
                        torch.distributed.all_reduce(p.grad)
                        p.grad /= acc.num_processes
            if tc.grad_clip:
                clip(params, tc.grad_clip)
            strategy.before_optimizer_step(ctx)
            if scheduled:  # per task, like one trainer.train() call of the HF Trainer
                lr = tc.lr * lr_factor(schedule, at["global_step"], total_steps, warmup)
                for g in opt.param_groups:
                    g["lr"] = lr
            opt.step()
            strategy.after_optimizer_step(ctx)
            opt.zero_grad(set_to_none=True)
            lv = loss.item() / acc.num_processes  # the global-batch loss, as logged by 1 process
            total, n = total + lv * len(xa_b), n + len(xa_b)
            at["global_step"] += 1
            if resume and resume.due(at["global_step"], total_steps):
                at |= {"epoch": epoch, "done": done, "total": total, "n": n,
                       "seconds": time.time() - t0, "fingerprint": resume.fingerprint}
                save_checkpoint(acc, resume.root, strategy, at, epoch_gen)
        losses.append(total / max(n, 1))
    wrapped.eval()
    for p in idle:
        p.requires_grad_(True)
    for ctx in ctxs:
        ctx.batch = None
        strategy.after_task(ctx)
    log = {"step": step, "task": name, "method": strategy.name, "seed": seed,
           "epoch_loss": losses, "seconds": round(time.time() - t0, 3),
           "pairs": sum(len(p[1]) for p in parts), "num_processes": acc.num_processes}
    for c in ctxs:
        log |= c.extra
    # one process: prepare() returned the model itself, and unwrap_model's compile check
    # would import dynamo (~1 s)
    return (model if wrapped is model else acc.unwrap_model(wrapped)), log


def check_partial_batch(n: int, tc: TrainSettings, processes: int, task: str) -> None:
    """A kept last batch must split evenly over processes, else Accelerate would pad it with
    repeated samples and N processes would no longer train like one."""
    rest = n % tc.batch_size if n > tc.batch_size else 0
    if not tc.drop_last and rest % processes:
        raise ValueError(f"task {task}: train.drop_last is false and the last batch of "
                         f"{rest} pairs does not split over {processes} processes; set "
                         "train.drop_last: true or use a process count dividing it")


def train_step(cfg: StepConfig | dict, method: str, seed: int, step: int, task: dict,
               train_dir: str | Path | list, prev_dir: str | Path, out_dir: str | Path) -> dict:
    """Train task `task` starting from `prev_dir`; write model, method state and log to out_dir."""
    cfg = StepConfig.of(cfg)  # a partial dict (library callers): the schema's defaults
    tc = cfg.train
    acc = make_accelerator(tc)
    set_seed(step_seed(seed, step), deterministic=tc.deterministic)
    model, prev_meta = load_model(prev_dir)
    start_digest = weights_digest(model)
    base = cfg.method or method  # `method` may be a variant (its run name)
    strategy = get_strategy(base, cfg)
    prev_state = Path(prev_dir) / "state"
    load_state_dir(strategy, prev_dir, prev_meta, model)

    specs = task.get("tasks", [task])  # a joint step trains on several tasks at once
    dirs = [train_dir] if isinstance(train_dir, str | Path) else list(train_dir)
    if len(dirs) != len(specs):
        raise ValueError(f"step {step}: {len(specs)} task(s) but {len(dirs)} feature folder(s)")
    parts = []
    for spec, d in zip(specs, dirs, strict=True):
        data = read_features(d)
        for m in spec["modalities"]:
            if m not in model.in_dims:
                raise ValueError(f"{d}: modality '{m}' has no head in {prev_dir}")
            bad = ~np.isfinite(data[m]).all(axis=1)  # else: a NaN loss, blamed on the lr
            if bad.any():
                raise ValueError(f"{d}: '{m}' features of sample '{data['keys'][bad.argmax()]}'"
                                 f" are NaN or infinite ({bad.sum()} sample(s) in all)")
        a, b = spec["modalities"]
        parts.append((spec, torch.from_numpy(data[a]), torch.from_numpy(data[b]),
                      torch.from_numpy(data["labels"])))
    every = tc.checkpoint_every
    resume = Resume(resume_dir(out_dir), fingerprint(
        cfg.as_dict(), method, seed, step, start_digest, prev_state,
        [t for p in parts for t in p[1:]], acc.num_processes), every) if every else None
    raw, log = fit_tasks(model, strategy, cfg, parts, step, seed, acc, resume)
    log |= {"start_digest": start_digest, "final_digest": weights_digest(raw)}
    if not all(math.isfinite(v) for v in log["epoch_loss"]):
        raise FloatingPointError(f"step {step}: non-finite training loss {log['epoch_loss']}")
    acc.wait_for_everyone()
    if acc.is_main_process:
        with atomic_dir(out_dir) as tmp:
            save_tensors(tmp / "model.safetensors", raw.state_dict())
            (tmp / "state").mkdir()
            strategy.save_state(tmp / "state")
            write_json(tmp / "meta.json", {
                "model": prev_meta["model"], "step": step, "task": task["name"],
                "method": base, "run": method, "seed": seed, "options": strategy.opts,
                "tasks_seen": [*prev_meta.get("tasks_seen", []), *(t["name"] for t in specs)],
                "log": log, DIGESTS: record_digests(tmp)})
        shutil.rmtree(resume_dir(out_dir), ignore_errors=True)  # the step is complete
    acc.wait_for_everyone()
    return log
