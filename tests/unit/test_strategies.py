"""What every method's state promises: it round-trips through save/load, and two tasks through
the real loop (AdamW, clipping) resume exactly from the saved state."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers import toy_classes
from helpers.toy_latent import DIMS, EMBED, cfg, fit, fresh, new_model, pairs

from cmcl.metrics import retrieval_metrics
from cmcl.models import MultiHead

METHODS = ["ewc", "lwf", "er", "der", "derpp", "gem", "agem"]
pytestmark = pytest.mark.usefixtures("one_thread")


# -- state round trips and the two-task run -------------------------------------------------
@pytest.mark.parametrize("method", ["er", "der", "gem"])
def test_state_round_trip(method, tmp_path):
    model = new_model()
    s = fresh(method, model, **({"memory_per_task": 20} if method == "gem" else
                                {"memory_size": 30}))
    fit(model, s, cfg(method), ("a", "b"), 1)
    s.save_state(tmp_path)
    t = fresh(method, model, tmp_path, **s.opts)
    mem, back = (s.memory, t.memory) if method == "gem" else (s.buffer, t.buffer)
    assert mem.size > 0 and mem._json() == back._json()
    for k in ("pair", "labels", "task"):
        assert torch.equal(getattr(mem, k), getattr(back, k))
    for m in mem.feat:
        assert torch.equal(mem.feat[m], back.feat[m])
    for m in mem.emb:
        assert torch.equal(mem.emb[m], back.emb[m])
    with pytest.raises(ValueError, match="dim"):
        fresh(method, MultiHead({**DIMS, "a": 7}, EMBED), tmp_path, **s.opts)


def old_task_map(model, strategy) -> float:
    xa, xb = pairs(("a", "b"), 40, 99)  # a fresh draw: not the pairs task 1 trained on
    with torch.no_grad():
        za, zb = (torch.nn.functional.normalize(strategy.embed(model, m, x), dim=-1)
                  for m, x in (("a", xa), ("b", xb)))
    return retrieval_metrics(za, zb, None, "instance")["map"]


@pytest.mark.parametrize("method", METHODS)
def test_two_tasks_resume_exactly_and_measure_the_old_task(method, tmp_path):
    torch.manual_seed(1)
    s1 = fresh(method, new_model())
    m1, log1 = fit(new_model(), s1, cfg(method), ("a", "b"), 1)
    s1.save_state(tmp_path)
    map1 = old_task_map(m1, s1)

    def step2(strategy):
        torch.manual_seed(2)
        return fit(copy.deepcopy(m1), strategy, cfg(method), ("a", "c"), 2)

    resumed, log2 = step2(fresh(method, m1, tmp_path))
    continued, _ = step2(s1)  # the same object that trained step 1, never saved or loaded
    torch.manual_seed(2)
    finetuned, _ = fit(copy.deepcopy(m1), fresh("finetune", m1), cfg(), ("a", "c"), 2)
    for k, v in resumed.state_dict().items():
        assert torch.equal(v, continued.state_dict()[k]), f"{method}: resume differs at {k}"
    assert not torch.equal(resumed.heads["a"].weight, finetuned.heads["a"].weight), \
        f"{method} did nothing at step 2"
    assert all(math.isfinite(x) for x in log1["epoch_loss"] + log2["epoch_loss"])
    map2 = old_task_map(resumed, s1)
    assert 0 < map2 <= 1 and 0 < map1 <= 1
    print(f"{method}: old-task mAP {map1:.3f} -> {map2:.3f}")


# -- every added method: two tasks, state saved and reloaded, resume is exact -----------------
@pytest.mark.parametrize(("method", "opts"), [
    ("co2l", {"memory_size": 40}), ("cila", {"memory_size": 40}),
    ("cflat", {}), ("comm", {}), ("comm", {"modality_identity": False})])
def test_two_tasks_resume_exactly(method, opts, tmp_path):
    c = toy_classes.cfg(method, **opts)
    torch.manual_seed(1)
    s1 = toy_classes.fresh(method, toy_classes.new_model(), **opts)
    m1, log1 = toy_classes.fit(toy_classes.new_model(), s1, c, ("a", "b"), 1, classes=4)
    s1.save_state(tmp_path)

    def step2(strategy):
        torch.manual_seed(2)
        return toy_classes.fit(copy.deepcopy(m1), strategy, c, ("a", "c"), 2)

    s2 = toy_classes.fresh(method, m1, tmp_path, **opts)
    resumed, log2 = step2(s2)
    continued, _ = step2(s1)
    torch.manual_seed(2)
    plain, _ = toy_classes.fit(copy.deepcopy(m1), toy_classes.fresh("finetune", m1),
                               toy_classes.cfg(), ("a", "c"), 2)
    for k, v in resumed.state_dict().items():
        assert torch.equal(v, continued.state_dict()[k]), f"{method}: resume differs at {k}"
    assert not torch.equal(resumed.heads["a"].weight, plain.heads["a"].weight)
    assert all(math.isfinite(x) for x in log1["epoch_loss"] + log2["epoch_loss"])
    x = torch.randn(8, 6)
    with torch.no_grad():  # what evaluation computes, method parts (adapters) included
        for m in "abc":
            assert torch.equal(s2.embed(resumed, m, x), s1.embed(continued, m, x))
