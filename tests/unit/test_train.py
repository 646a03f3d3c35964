"""The training loop: batch gathering equals the old per-sample DataLoader bit for bit,
train_inputs feeds the batches and leaves the split alone, the lr schedule equals transformers'."""

from __future__ import annotations

import pytest
import torch

from cmcl.models import MultiHead
from cmcl.strategies import get_strategy
from cmcl.train import lr_factor

CFG = {"model": {"embed_dim": 8}, "loss": {}, "methods": {},
       "train": {"epochs": 3, "batch_size": 8, "lr": 0.05, "weight_decay": 0.0, "grad_clip": 1.0},
       "eval": {"n_subsets": 1, "subset_size": 100}}


def _reference_loader(tensors, batch_size, gen, drop_last=True):
    """The loader fit_tasks used before batch gathering: per-sample TensorDataset + collation."""
    from torch.utils.data import DataLoader, TensorDataset

    return DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=True,
                      generator=gen, drop_last=len(tensors[0]) > batch_size)


DIMS = {"a": 6, "b": 5, "c": 7}


@pytest.mark.parametrize("n, parts", [(37, 1), (5, 1), (37, 2)])  # drop_last, one batch, joint
def test_batch_gather_loader_trains_bit_identically(monkeypatch, one_thread, n, parts):
    """Same sampler stream, order and batch contents as DataLoader(TensorDataset): the recorded
    expected results stay valid only if the weights are bitwise the old ones."""
    import cmcl.train as tr

    cfg = {**CFG, "methods": {}}
    gen = torch.Generator().manual_seed(0)
    pairs = [("a", "b"), ("b", "c")][:parts]
    tasks = [({"name": a + b, "modalities": [a, b]}, torch.randn(n, DIMS[a], generator=gen),
              torch.randn(n, DIMS[b], generator=gen), torch.randint(0, 3, (n,), generator=gen))
             for a, b in pairs]

    def run() -> tuple[dict, list]:
        torch.manual_seed(0)
        model = MultiHead(DIMS, 4)
        model.reset("orthogonal", 0)
        raw, log = tr.fit_tasks(model, get_strategy("finetune", cfg), cfg, tasks, 1, 1)
        return raw.state_dict(), log["epoch_loss"]

    new_w, new_loss = run()
    monkeypatch.setattr(tr, "batch_loader", _reference_loader)
    old_w, old_loss = run()
    assert new_loss == old_loss
    for k in old_w:
        assert torch.equal(new_w[k], old_w[k]), k


@pytest.mark.parametrize("parts", [1, 2])
def test_train_inputs_feed_the_batches_and_leave_the_split_alone(one_thread, parts):
    """train_inputs runs once per modality of each part, after before_task; batches come from
    what it returns (training equals training on the mapped features, bitwise: the shuffling
    is unchanged), while ctx.train keeps the untouched split."""
    import cmcl.train as tr
    from cmcl.strategies.finetune import Finetune

    cfg = {**CFG, "methods": {}}
    gen = torch.Generator().manual_seed(0)
    pairs = [("a", "b"), ("b", "c")][:parts]
    tasks = [({"name": a + b, "modalities": [a, b]}, torch.randn(37, DIMS[a], generator=gen),
              torch.randn(37, DIMS[b], generator=gen), torch.randint(0, 3, (37,), generator=gen))
             for a, b in pairs]
    originals = {t["name"]: (xa.clone(), xb.clone()) for t, xa, xb, _ in tasks}

    class Shifting(Finetune):
        """Feeds x + 1 for modality b (a scale alone would be invisible to a normalised loss
        and AdamW); checks the split each step."""

        def __init__(self, cfg: dict) -> None:
            super().__init__(cfg)
            self.events: list[tuple[str, ...]] = []

        def before_task(self, ctx):
            self.events.append(("before_task",))

        def train_inputs(self, ctx, modality, x):
            self.events.append(("train_inputs", ctx.task, modality))
            return x + 1 if modality == "b" else x

        def before_optimizer_step(self, ctx):
            xa, xb = originals[ctx.task]
            assert torch.equal(ctx.train[ctx.modalities[0]], xa)
            assert torch.equal(ctx.train[ctx.modalities[1]], xb)

    def run(strategy, parts_) -> tuple[dict, list]:
        torch.manual_seed(0)
        model = MultiHead(DIMS, 4)
        model.reset("orthogonal", 0)
        raw, log = tr.fit_tasks(model, strategy, cfg, parts_, 1, 1)
        return raw.state_dict(), log["epoch_loss"]

    strat = Shifting(cfg)
    got_w, got_loss = run(strat, tasks)
    assert strat.events == [("before_task",)] + [("train_inputs", a + b, m) for a, b in pairs
                                                 for m in (a, b)]
    shifted = [(t, xa + 1 if t["modalities"][0] == "b" else xa,
                xb + 1 if t["modalities"][1] == "b" else xb, y) for t, xa, xb, y in tasks]
    want_w, want_loss = run(Finetune(cfg), shifted)
    assert got_loss == want_loss
    for k in want_w:
        assert torch.equal(got_w[k], want_w[k]), k
    plain_w, _ = run(Finetune(cfg), tasks)
    assert not torch.equal(plain_w["heads.b.weight"], got_w["heads.b.weight"])


def test_lr_factor_equals_transformers_get_scheduler():
    from transformers import get_scheduler

    for name, hf_name in (("linear", "linear"), ("cosine", "cosine"),
                          ("constant", "constant_with_warmup")):
        for warmup in (0, 3):
            p = torch.nn.Parameter(torch.zeros(1))
            opt = torch.optim.SGD([p], lr=1.0)
            sched = get_scheduler(hf_name, opt, num_warmup_steps=warmup, num_training_steps=20)
            for step in range(20):
                assert lr_factor(name, step, 20, warmup) == pytest.approx(
                    opt.param_groups[0]["lr"], abs=1e-12), (name, warmup, step)
                opt.step()
                sched.step()


def test_identity_init_needs_square_heads(tmp_path):
    """model.init identity with features of another dim than embed_dim is refused, naming
    them, instead of falling back to random rows (the untrained row would not be the encoder)."""
    import json

    from cmcl.train import init_step

    (tmp_path / "f").mkdir()
    (tmp_path / "f/meta.json").write_text(json.dumps({"dims": {"text": 8, "audio": 6}}))
    cfg = {"model": {"embed_dim": 8, "init": "identity"}}
    with pytest.raises(ValueError, match=r"model\.init identity .* \{'audio': 6\} differ"):
        init_step(cfg, "finetune", 1, [tmp_path / "f"], tmp_path / "step0")
    assert not (tmp_path / "step0").exists()
    init_step({"model": {"embed_dim": 8}}, "finetune", 1, [tmp_path / "f"], tmp_path / "step0")
