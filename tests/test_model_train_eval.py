import json

import pytest
import torch

from cmcl.losses import info_nce, resolve
from cmcl.models import MultiHead


def test_info_nce_prefers_aligned_pairs():
    z = torch.nn.functional.normalize(torch.randn(16, 8), dim=-1)
    aligned = info_nce(z, z, temperature=0.1)
    shuffled = info_nce(z, z[torch.randperm(16)], temperature=0.1)
    assert aligned < shuffled
    one_way = info_nce(z, z.flip(0), normalize=False, symmetric=False)
    assert torch.isfinite(one_way)


def test_paper_preset_matches_the_authors_code():
    assert resolve({"preset": "paper", "temperature": 0.1}) == {
        "temperature": 1.0, "normalize": False, "symmetric": False}


def test_init_is_identity_when_square_and_orthogonal_otherwise():
    m = MultiHead({"a": 8, "b": 20}, 8)
    m.reset("identity", 0)
    assert torch.equal(m.heads["a"].weight, torch.eye(8))
    w = m.heads["b"].weight
    assert torch.allclose(w @ w.T, torch.eye(8), atol=1e-5)


def test_checkpoint_of_another_shape_is_refused():
    m = MultiHead({"a": 8}, 4)
    with pytest.raises(ValueError, match=r"ckpt: 'heads.a.weight' has shape \(4, 9\) in the "
                                         r"checkpoint but \(4, 8\) in the model"):
        m.check_state({"heads.a.weight": torch.zeros(4, 9)}, "ckpt")
    with pytest.raises(ValueError, match="unexpected .*heads.b.weight"):
        m.check_state({"heads.a.weight": torch.zeros(4, 8), "heads.b.weight": torch.zeros(4, 2)},
                      "ckpt")


@pytest.fixture
def features(corpus, tmp_path):
    """Feature shards of an image-audio task of the synthetic corpus (no text encoder needed)."""
    from cmcl.embed import embed_split
    from cmcl.shards import shard_task

    task = {"name": "ia", "corpus": "c", "modalities": ["image", "audio"], "pairing": "class",
            "relevance": "label"}
    for split in ("train", "test"):
        shard_task(task, {"path": str(corpus)}, split, tmp_path / f"s_{split}")
        embed_split(tmp_path / f"s_{split}", tmp_path / f"f_{split}",
                    {"image": "pixels", "audio": "mfcc_stats"})
    return task, tmp_path / "f_train", tmp_path / "f_test"


CFG = {"model": {"embed_dim": 8}, "loss": {}, "methods": {},
       "train": {"epochs": 3, "batch_size": 8, "lr": 0.05, "weight_decay": 0.0, "grad_clip": 1.0},
       "eval": {"n_subsets": 1, "subset_size": 100}}


def test_init_train_evaluate_chain(features, tmp_path):
    import pandas as pd

    from cmcl.evaluate import evaluate_step
    from cmcl.train import init_step, load_model, train_step

    task, ftrain, ftest = features
    init_step(CFG, "dns", 1, [ftrain], tmp_path / "step0")
    log = train_step(CFG, "dns", 1, 1, task, ftrain, tmp_path / "step0", tmp_path / "step1")
    meta0 = json.loads((tmp_path / "step0/meta.json").read_text())
    assert log["start_digest"] == meta0["log"]["final_digest"] != log["final_digest"]
    assert (tmp_path / "step1/state/subspace.json").exists()
    model, meta = load_model(tmp_path / "step1")
    assert meta["tasks_seen"] == ["ia"] and meta["options"]["placement"] == "exact"
    df0 = evaluate_step(CFG, tmp_path / "step0", [task], [ftest], tmp_path / "e0.parquet")
    df1 = evaluate_step(CFG, tmp_path / "step1", [task], [ftest], tmp_path / "e1.parquet")
    assert pd.read_parquet(tmp_path / "e1.parquet").equals(df1)
    m0 = df0.set_index("metric").value
    m1 = df1.set_index("metric").value
    assert {"r1", "r5", "r10", "map", "r1_a2b", "map_b2a"} <= set(m1.index)
    assert m1["map"] > m0["map"]  # training on the task improves its retrieval


def test_train_refuses_a_modality_without_head(features, tmp_path):
    from cmcl.train import init_step, train_step

    task, ftrain, _ = features
    init_step(CFG, "finetune", 1, [ftrain], tmp_path / "step0")
    bad = {**task, "modalities": ["image", "depth"]}
    with pytest.raises(ValueError, match="modality 'depth' has no head"):
        train_step(CFG, "finetune", 1, 1, bad, ftrain, tmp_path / "step0", tmp_path / "s1")
    assert not (tmp_path / "s1").exists()


def test_cli_methods_lists_the_registry(capsys):
    from cmcl.cli import main

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "dns" in out and "finetune" in out and "arXiv:2503.14963" in out


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
    from cmcl.strategies import get_strategy

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
