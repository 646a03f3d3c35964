"""The stage-config layer: one definition of what each job reads and what changes a result."""

from __future__ import annotations

import copy
import json

import pytest
from helpers.data import ROOT

from cmcl import stages
from cmcl.config import ParamsError, check, load
from cmcl.schema import complete, defaults


@pytest.fixture(scope="module")
def params() -> dict:
    return load(ROOT / "params.yaml")


def changed(params: dict, path: str, value) -> dict:
    out = copy.deepcopy(params)
    *parents, leaf = path.split(".")
    node = out
    for p in parents:
        node = node[p]
    node[leaf] = value
    return out


def test_neutral_values_are_the_schema_defaults():
    """A job gets a left-out neutral key back from the schema: it must be the same value."""
    for ignores in (stages.TRAIN_IGNORES, stages.EMBED_IGNORES):
        for key, value in ignores.get("neutral", {}).items():
            section, leaf = key.split(".")
            assert defaults(section)[leaf] == value, key


def test_rule_params_leave_out_only_what_cannot_change_the_output(params):
    seq, names = next(iter(params["sequences"].items()))
    task = names[0]
    assert stages.shard(changed(params, "shard.workers", 7), task).params() \
        == stages.shard(params, task).params()
    assert stages.shard(changed(params, "shard.samples_per_shard", 3), task).params() \
        != stages.shard(params, task).params()  # other tars: the job reruns
    assert stages.embed(changed(params, "embed.processes", 4), task).params() \
        == stages.embed(params, task).params()
    for key, value in (("train.checkpoint_every", 50), ("train.seeds", [0, 1, 2, 3]),
                       ("train.methods", ["dns"])):
        assert stages.train(changed(params, key, value), seq, "finetune", 1).params() \
            == stages.train(params, seq, "finetune", 1).params(), key
    other = changed(params, "methods.dns.threshold_in", 0.5)
    assert stages.train(other, seq, "dns", 1).params() \
        != stages.train(params, seq, "dns", 1).params()
    assert stages.train(other, seq, "finetune", 1).params() \
        == stages.train(params, seq, "finetune", 1).params()  # tuning one method, not another


def test_run_key_follows_results_not_bytes(params):
    seq = next(iter(params["sequences"]))
    key = stages.run_key(params, seq, "dns")
    assert stages.run_key(changed(params, "shard.samples_per_shard", 3), seq, "dns") == key
    assert stages.run_key(changed(params, "embed.processes", 2), seq, "dns") == key
    assert stages.run_key(changed(params, "train.checkpoint_every", 9), seq, "dns") == key
    assert stages.run_key(changed(params, "train.seeds", [5]), seq, "dns") != key  # averaged
    assert stages.run_key(changed(params, "eval.subset_size", 50), seq, "dns") != key
    assert stages.run_key(changed(params, "model.embed_dim", 32), seq, "dns") != key
    assert stages.run_key(changed(params, "methods.gpm.threshold", 0.5), seq, "dns") == key


def test_a_job_completes_its_config_from_the_schema(params):
    seq = next(iter(params["sequences"]))
    st = stages.train(params, seq, "dns", 2)
    got = complete(json.loads(st.params()))
    for key in ("lr_schedule", "drop_last", "decay_biases", "preset"):  # left out: neutral
        assert key not in json.loads(st.params())["train"]
        assert got["train"][key] == st.values["train"][key]
    assert got["methods"] == st.values["methods"] and got["task"] == st.values["task"]


def test_metric_names_follow_eval_ks(params):
    p = changed(params, "eval.ks", [1, 5, 20])
    assert stages.metric_names(p) == ["map", "r1", "r5", "r20", "zs_acc"]
    assert "r20_final_avg" in stages.check(p).values["metrics"]
    check(changed(p, "report.main_metric", "r20"))
    with pytest.raises(ParamsError, match=r"report.main_metric: 'r10' is not a score"):
        check(changed(p, "report.main_metric", "r10"))


def test_the_stage_layer_loads_without_torch():
    """The Snakefile builds every rule's params from it at each parse: no torch there."""
    import subprocess
    import sys

    code = "import sys, cmcl.stages, cmcl.config\nassert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_report_states_the_settings_behind_the_numbers():
    """run_settings: shared train settings without the matrix, each method's own (the tuned
    lr), encoders and the tuned file, so a report says how its numbers were obtained."""
    p = load(ROOT / "params.yaml")
    s = stages.report(p).values["settings"]
    assert not {"methods", "seeds", "checkpoint_every"} & set(s["train"])
    lr = stages.method_params(p, "dns")["train"]["lr"]
    assert s["methods"]["dns"]["lr"] == lr != s["train"]["lr"]
    assert s["tuned"] == p["tuned"] and s["encoders"] == p["embed"]["encoders"]
    assert s["imported"] == []
