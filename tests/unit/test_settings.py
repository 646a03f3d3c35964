"""The typed job configs agree with the schema, and every pipeline job's --cfg types cleanly."""

from __future__ import annotations

import dataclasses

import pytest
from helpers.data import ROOT

from cmcl import stages
from cmcl.config import load
from cmcl.schema import complete, defaults, load_schema
from cmcl.settings import (
    CorpusSettings,
    EmbedSettings,
    EvalConfig,
    EvalSettings,
    LossSettings,
    ModelSettings,
    ReportSettings,
    Section,
    ShardSettings,
    StepConfig,
    TrainSettings,
)

SECTIONS = [CorpusSettings, ModelSettings, LossSettings, TrainSettings, EvalSettings,
            ShardSettings, EmbedSettings, ReportSettings]


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda c: c.__name__)
def test_fields_are_the_schema_keys(cls: type[Section]):
    sub = load_schema()["properties"][cls.NAME]
    keys = set((sub["additionalProperties"] if cls.ENTRY else sub)["properties"]) - set(cls.SKIP)
    assert {f.name for f in dataclasses.fields(cls)} == keys


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda c: c.__name__)
def test_defaults_come_from_the_schema(cls: type[Section]):
    given = {"path": "x"} if cls is CorpusSettings else {"encoders": {}} \
        if cls is EmbedSettings else {}
    typed = cls.of(given)
    for key, value in defaults(cls.NAME, cls.ENTRY).items():
        if key not in cls.SKIP:
            assert getattr(typed, key) == (tuple(value) if key == "ks" else value), key


def test_an_unknown_key_is_named():
    with pytest.raises(ValueError, match=r"train: unknown key\(s\) \['batchsize'\]"):
        TrainSettings.of({"batchsize": 32})


def test_a_key_without_default_is_named():
    with pytest.raises(ValueError, match=r"corpora: no value for \['path'\]"):
        CorpusSettings.of({})


def test_train_settings_leave_the_matrix_out():
    tc = TrainSettings.of({"methods": ["dns"], "seeds": [0], "lr": 0.5})
    assert tc.lr == 0.5 and not hasattr(tc, "methods")


def test_loss_preset_wins_over_explicit_values():
    assert LossSettings.of({"temperature": 0.3}).nce()["temperature"] == 0.3
    assert LossSettings.of({"preset": "paper", "temperature": 0.3}).nce()["temperature"] == 1.0


def test_every_job_of_the_default_pipeline_types_its_cfg():
    """What the rules pass (each stage's params(), completed as the CLI does) builds the typed
    config the job reads, with the values params gave."""
    p = load(ROOT / "params.yaml")
    for seq, names in p["sequences"].items():
        for run in p["train"]["methods"]:
            steps = [len(names)] if stages.is_joint(p, run) else range(1, len(names) + 1)
            for step in steps:
                raw = stages.train(p, seq, run, step)
                sc = StepConfig.of(complete(raw.output_identity()))
                assert sc.train.lr == stages.method_params(p, run)["train"]["lr"]
                assert sc.options(stages.base_method(p, run)) == stages.run_options(p, run)
                assert sc.task == raw.values["task"]
        ev = EvalConfig.of(complete(stages.evaluate(p, seq).output_identity()))
        assert ev.eval.ks == tuple(p["eval"]["ks"]) and ev.sequence == seq
        assert [t["name"] for t in ev.tasks] == list(names)
    for task in p["tasks"]:
        ShardSettings.of(complete(stages.shard(p, task).output_identity())["shard"])
        if not stages.imported(p, task):
            emb = EmbedSettings.of(complete(stages.embed(p, task).output_identity())["embed"])
            assert set(emb.encoders) <= set(p["embed"]["encoders"])


def test_step_config_round_trips():
    sc = StepConfig.of({"train": {"epochs": 3}, "methods": {"dns": {"threshold_in": 0.9}},
                        "task": {"name": "t"}})
    assert StepConfig.of(sc.as_dict()) == sc
    assert sc.with_train(checkpoint_every=5).train.checkpoint_every == 5
