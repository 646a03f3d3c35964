"""Params validation at start-up: defaults filled, bad values named by their key, method option
rules (thresholds per mode, variants), YAML errors with line and column, task classes by name
or index, overrides and sequences reaching the step config."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers.data import ROOT

from cmcl.config import ParamsError, check, load


def params(**methods) -> dict:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["methods"].update(methods)
    return p


def test_default_params_validate_and_get_defaults():
    p = load(ROOT / "params.yaml")
    assert p["methods"]["dns"]["placement"] == "exact"
    assert p["tasks"]["t2_text_audio"]["pairing"] == "sample"


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p.pop("train"), "<top level>: 'train' is a required property"),
    (lambda p: p.update(colour="red"), "Additional properties are not allowed ('colour'"),
    (lambda p: p["train"].update(lr="fast"), "train.lr: 'fast' is not of type 'number'"),
    (lambda p: p["sequences"]["digits"].append("t9"),
     "sequences.digits[4]: task 't9' is not declared"),
    (lambda p: p["sequences"].update(again=["t2_text_audio", "t2_text_audio"]),
     "sequences.again: a task appears twice"),
    (lambda p: p["overrides"].update(joint={"train": {"epochs": 0}}),
     "overrides.joint.train.epochs: 0 is less than the minimum of 1"),
    (lambda p: p["overrides"].update(joint={"train": {"seeds": [1]}}),
     "overrides.joint.train.seeds: the experiment matrix is global"),
    (lambda p: p["overrides"].update(nope={"train": {}}), "overrides.nope: not a registered"),
    (lambda p: p["sweep"].update(sequence="other"), "sweep.sequence: 'other' is not declared"),
    (lambda p: (p["overrides"].update(dns={"train": {"lr": 0.1}}),
                p["sweep"]["space"].update({"train.lr": {"type": "float", "low": 0.001,
                                                        "high": 0.1}})),
     "sweep.space.train.lr: overrides.dns.train.lr would replace every sampled value"),
    (lambda p: p["tasks"]["t2_text_audio"].update(corpus="x"), "tasks.t2_text_audio.corpus: 'x'"),
    (lambda p: p["embed"]["encoders"].update(image="minilm"),
     "embed.encoders.image: encoder 'minilm' encodes 'text', not 'image'"),
    (lambda p: p["methods"].update(nope={}), "methods.nope: options for an unregistered method"),
    (lambda p: p["methods"]["dns"].update(sides="left"), "methods.dns.sides: 'left' is not one of"),
])
def test_bad_params_name_the_key(mutate, message):
    p = params()
    mutate(p)
    with pytest.raises(ParamsError) as e:
        check(p)
    assert message in str(e.value)


def test_unreadable_params_file(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("train: [unclosed")
    with pytest.raises(ParamsError, match="p.yaml: not valid YAML"):
        load(f)
    with pytest.raises(ParamsError, match="params file not found"):
        load(tmp_path / "missing.yaml")


def test_overrides_and_sequences_reach_the_step_config():
    from cmcl.stages import method_params, step_task

    p = params()
    rev = list(reversed(p["sequences"]["digits"]))
    p["sequences"]["rev"] = rev
    p["overrides"] = {"joint": {"train": {"epochs": 9}}}
    p = check(p)
    assert method_params(p, "joint")["train"]["epochs"] == 9
    assert method_params(p, "dns")["train"]["epochs"] == p["train"]["epochs"] == 5
    assert step_task(p, "rev", "dns", 1)["name"] == rev[0]
    assert step_task(p, "digits", "dns", 1)["name"] == rev[-1]
    assert [t["name"] for t in step_task(p, "rev", "joint", 4)["tasks"]] == rev


@pytest.mark.parametrize("method, opts, message", [
    ("dns", {"threshold_in": 1.0},
     "methods.dns.threshold_in: 1.0 is greater than or equal to the maximum of 1 "
     "(threshold_mode relative protects eigenvalues above threshold x the largest: >= 1 "
     "protects nothing"),
    ("dns", {"threshold_mode": "relative", "threshold_out": 3},
     "methods.dns.threshold_out: 3 is greater than or equal to the maximum of 1"),
    ("dns", {"threshold_mode": "energy", "threshold_in": 0.9, "threshold_out": 1.5},
     "methods.dns.threshold_out: 1.5 is greater than the maximum of 1 (threshold_mode energy "
     "keeps this fraction of the spectrum's energy, a value in (0, 1])"),
    ("dns", {"threshold_mode": "energy", "threshold_in": 0, "threshold_out": 0.9},
     "methods.dns.threshold_in: 0 is less than or equal to the minimum of 0"),
    ("gpm", {"threshold": 1.5}, "methods.gpm.threshold: 1.5 is greater than the maximum of 1"),
    ("gpm", {"threshold_mode": "relative", "threshold": 1},
     "methods.gpm.threshold: 1 is greater than or equal to the maximum of 1"),
    ("adam_nscl", {"a": 2.0}, "methods.adam_nscl.a: 2.0 is greater than or equal to the maximum"),
    ("adam_nscl", {"threshold_mode": "min_ratio", "a": 0.5},
     "methods.adam_nscl.a: 0.5 is less than the minimum of 1 (threshold_mode min_ratio"),
])
def test_thresholds_that_protect_nothing_or_fail_later_are_refused_at_startup(method, opts,
                                                                              message):
    with pytest.raises(ParamsError) as e:
        check(params(**{method: opts}))
    assert message in str(e.value)


def test_variants_are_checked_by_the_same_rules():
    p = params()
    p["variants"] = {"dns_e": {"method": "dns", "options": {"threshold_mode": "energy",
                                                            "threshold_in": 0}}}
    p["train"]["methods"] = ["dns_e"]
    with pytest.raises(ParamsError, match=r"variants\.dns_e\.options\.threshold_in: 0 is less "
                                          r"than or equal to the minimum of 0"):
        check(p)


def test_valid_thresholds_and_unused_sides_pass():
    ok = check(params(dns={"sides": "input", "threshold_out": 5.0},
                      gpm={"threshold_mode": "absolute", "threshold": 7.0},
                      adam_nscl={"threshold_mode": "min_ratio", "a": 1.001}))
    assert ok["methods"]["dns"]["threshold_out"] == 5.0
    assert ok["methods"]["dns"]["threshold_mode"] == "relative"  # defaults still filled
    assert 0 <= check(params())["methods"]["dns"]["threshold_in"] < 1  # params.yaml passes


def test_duplicate_yaml_keys_are_refused_naming_key_and_lines(tmp_path):
    from cmcl.config import load

    f = tmp_path / "dup.yaml"
    f.write_text("extends: null\nmethods:\n  dns:\n    threshold_in: 0.1\n    sides: both\n"
                 "    threshold_in: 0.5\n")
    with pytest.raises(ParamsError, match=r"dup\.yaml: not valid YAML at line 6, column 5: "
                                          r"duplicate key 'threshold_in' \(first at line 4\)"):
        load(f, as_configfile=True)


def test_yaml_errors_name_line_and_column_and_non_utf8_is_named(tmp_path):
    from cmcl.config import read_params

    f = tmp_path / "p.yaml"
    f.write_text("train:\n  lr: [0.1\n")
    with pytest.raises(ParamsError, match=r"p\.yaml: not valid YAML at line 3, column 1: "):
        read_params(f)
    f.write_bytes(b"train:\n  # caf\xe9\n")
    with pytest.raises(ParamsError, match=r"p\.yaml: not UTF-8 text \(byte 0xe9 at line 2\)"):
        read_params(f)


T1 = "t1_text_image_04"


def test_builtin_task_classes_by_name_resolve_at_startup():
    p = params()
    p["tasks"][T1]["classes"] = ["zero", "one", 2, "three", 4]
    assert check(p)["tasks"][T1]["classes"] == [0, 1, 2, 3, 4]
    assert check(params())["tasks"][T1]["classes"] == [0, 1, 2, 3, 4]  # indices unchanged


@pytest.mark.parametrize("classes, message", [
    ([0, 42], f"tasks.{T1}.classes: 42 is outside the class list; the corpus's classes are "
              "['zero', 'one', "),
    (["zero", "cat"], f"tasks.{T1}.classes: 'cat' is not a class name; the corpus's classes "
                      "are ['zero', "),
    ([0, "zero"], f"tasks.{T1}.classes: [0, 'zero'] names a class twice (as indices [0, 0])"),
])
def test_task_classes_outside_the_class_list_are_refused_at_startup(classes, message):
    """[0, 42] used to pass and crash evaluate with an IndexError."""
    p = params()
    p["tasks"][T1]["classes"] = classes
    with pytest.raises(ParamsError) as e:
        check(p)
    assert message in str(e.value)


def test_generic_corpus_classes_resolve_from_corpus_json(corpus):
    p = params()
    p["corpora"]["mine"] = {"path": str(corpus)}
    p["tasks"]["mine_ti"] = {"corpus": "mine", "modalities": ["text", "image"],
                             "classes": ["three", "one"]}
    assert check(p)["tasks"]["mine_ti"]["classes"] == [3, 1]
    p["tasks"]["mine_ti"]["classes"] = [1, 4]
    with pytest.raises(ParamsError, match=r"tasks\.mine_ti\.classes: 4 is outside the class "
                                          r"list; the corpus's classes are \['zero'"):
        check(p)
    meta = json.loads((corpus / "corpus.json").read_text())
    del meta["classes"]
    (corpus / "corpus.json").write_text(json.dumps(meta))
    p["tasks"]["mine_ti"]["classes"] = ["one", 2]
    with pytest.raises(ParamsError, match=r"tasks\.mine_ti\.classes: 'one' is not a class name; "
                                          r"the corpus declares no class list"):
        check(p)
    p["tasks"]["mine_ti"]["classes"] = [1, 7]  # no class list: any index may be a label
    assert check(p)["tasks"]["mine_ti"]["classes"] == [1, 7]


def test_sections_with_a_default_for_every_key_may_be_left_out():
    """An `extends: null` file needs only what has no default: corpora, tasks, sequences,
    embed (its encoders) and train (the matrix)."""
    full = load(ROOT / "params.yaml")
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key in ("shard", "model", "loss", "eval", "report"):
        p.pop(key)
    got = check(p)
    for key in ("shard", "loss", "eval"):
        assert got[key] == full[key], key
    assert got["model"]["embed_dim"] == 64 and got["report"]["main_metric"] == "map"
    with pytest.raises(ParamsError, match="'embed' is a required property"):
        check({k: v for k, v in p.items() if k != "embed"})


def test_a_misspelt_key_gets_the_closest_allowed_one():
    p = params(dns={"threshhold_in": 0.1})
    p["train"]["epoch"] = 2
    with pytest.raises(ParamsError, match=r"train: Additional properties are not allowed "
                                          r"\('epoch' was unexpected\) "
                                          r"\(did you mean 'epochs'\?\)"):
        check(p)
    with pytest.raises(ParamsError, match=r"methods.dns: .*'threshhold_in' was unexpected\) "
                                          r"\(did you mean 'threshold_in'\?\)"):
        check(params(dns={"threshhold_in": 0.1}))
    with pytest.raises(ParamsError) as e:
        check(params(dns={"zzz": 1}))
    assert "did you mean" not in str(e.value)  # nothing close: no guess


def test_schema_and_cross_field_errors_come_in_one_message():
    p = params(dns={"threshhold_in": 0.1})
    p["train"]["epoch"] = 2
    p["sequences"]["digits"].append("t9")
    with pytest.raises(ParamsError) as e:
        check(p)
    msg = str(e.value)
    assert "'epoch' was unexpected" in msg  # the schema's
    assert "'threshhold_in' was unexpected" in msg and "task 't9' is not declared" in msg


def test_params_too_malformed_for_cross_field_checks_still_name_the_schema_error():
    p = params()
    p["tasks"] = ["t1"]  # every cross-field rule reads tasks as a mapping
    with pytest.raises(ParamsError, match=r"tasks: \['t1'\] is not of type 'object'"):
        check(p)
