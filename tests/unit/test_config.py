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


def _write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_extends_is_followed_to_the_root_of_its_chain(tmp_path, monkeypatch):
    """myl2b -> myl2 -> my (no extends: over params.yaml): every file's keys, in chain order."""
    from cmcl.config import compose, sources

    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "params.yaml", (ROOT / "params.yaml").read_text())
    (tmp_path / "pipeline").symlink_to(ROOT / "pipeline")  # the tuned file params.yaml names
    _write(tmp_path / "my.yaml", "train:\n  methods: [finetune, dns]\n  seeds: [1]\n")
    _write(tmp_path / "myl2.yaml", "extends: my.yaml\ntrain:\n  epochs: 2\n  lr: 0.2\n")
    _write(tmp_path / "myl2b.yaml", "extends: myl2.yaml\ntrain:\n  lr: 0.5\n")
    got = compose(["myl2b.yaml"])
    assert got["train"]["methods"] == ["finetune", "dns"] and got["train"]["seeds"] == [1]
    assert got["train"]["epochs"] == 2 and got["train"]["lr"] == 0.5  # the last file wins
    assert got["corpora"] == read_yaml(tmp_path / "params.yaml")["corpora"]  # the root's
    assert "extends" not in got
    assert sources(["myl2b.yaml"]) == "params.yaml + my.yaml + myl2.yaml + myl2b.yaml"
    # as if the chain were given on the command line: the same configuration
    assert compose(["my.yaml", "myl2.yaml", "myl2b.yaml"]) == got
    check(got)  # and it validates


def read_yaml(path) -> dict:
    return yaml.safe_load(path.read_text())


def test_extends_chain_of_the_paper_settings_keeps_their_composition(tmp_path):
    """unibind.yaml extends imagebind.yaml (extends: null): a file extending unibind gets both."""
    from cmcl.config import compose, sources

    mine = _write(tmp_path / "ub.yaml", "extends: pipeline/params/unibind.yaml\n"
                                        "train:\n  seeds: [7]\n")
    uni = compose(["pipeline/params/unibind.yaml"], default_base=ROOT / "params.yaml")
    got = compose([mine], default_base=ROOT / "params.yaml")
    assert got == {**uni, "train": {**uni["train"], "seeds": [7]}}
    assert sources([mine]) == (f"pipeline/params/imagebind.yaml + pipeline/params/unibind.yaml"
                               f" + {mine}")


def test_extends_path_is_tried_beside_the_declaring_file_and_a_missing_one_is_named(
        tmp_path, monkeypatch):
    from cmcl.config import compose, sources

    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "cfg/base.yaml", "extends: null\nkeep: 1\n")
    _write(tmp_path / "cfg/top.yaml", "extends: base.yaml\nmine: 2\n")  # not in the cwd
    assert compose(["cfg/top.yaml"]) == {"keep": 1, "mine": 2}
    assert sources(["cfg/top.yaml"]) == "cfg/base.yaml + cfg/top.yaml"
    _write(tmp_path / "cfg/bad.yaml", "extends: nowhere.yaml\n")
    with pytest.raises(ParamsError, match=r"cfg/bad\.yaml: extends: 'nowhere\.yaml' does not "
                                          r"exist \(looked in the working directory and in "
                                          r"cfg/\)"):
        compose(["cfg/bad.yaml"])
    _write(tmp_path / "cfg/num.yaml", "extends: 3\n")
    with pytest.raises(ParamsError, match=r"cfg/num\.yaml: extends: expected a params file's "
                                          r"path or null, got 3"):
        compose(["cfg/num.yaml"])


def test_an_extends_cycle_is_an_error_naming_its_files(tmp_path, monkeypatch):
    from cmcl.config import compose, sources

    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "a.yaml", "extends: b.yaml\n")
    _write(tmp_path / "b.yaml", "extends: c.yaml\n")
    _write(tmp_path / "c.yaml", "extends: a.yaml\n")
    _write(tmp_path / "self.yaml", "extends: self.yaml\n")
    for fn in (compose, sources):
        with pytest.raises(ParamsError, match=r"extends: a cycle \(a\.yaml -> b\.yaml -> "
                                              r"c\.yaml -> a\.yaml\)"):
            fn(["a.yaml"])
    with pytest.raises(ParamsError, match=r"a cycle \(self\.yaml -> self\.yaml\)"):
        compose(["self.yaml"])


def test_the_default_base_and_a_lone_file_compose_as_before(tmp_path, monkeypatch):
    """params.yaml is the root (no extends of its own); a file outside the project runs alone."""
    from cmcl.config import compose, compose_noting, sources

    assert compose([ROOT / "params.yaml"], default_base=ROOT / "params.yaml") == \
        read_yaml(ROOT / "params.yaml")
    monkeypatch.chdir(tmp_path)  # no params.yaml here
    _write(tmp_path / "alone.yaml", "x: 1\n")
    assert compose(["alone.yaml"]) == {"x": 1} and sources(["alone.yaml"]) == "alone.yaml"
    assert sources([]) == "params.yaml"
    # a redeclared task in a chain is noted, naming the file it was declared in
    _write(tmp_path / "base.yaml", "extends: null\ntasks:\n  t: {corpus: c}\n")
    _write(tmp_path / "mid.yaml", "extends: base.yaml\ntasks:\n  t: {classes: [1]}\n")
    _write(tmp_path / "top.yaml", "extends: mid.yaml\n")
    got, note = compose_noting(["top.yaml"])
    assert got["tasks"]["t"] == {"corpus": "c", "classes": [1]}
    assert note and "tasks.t (merged key by key, by mid.yaml) already declared in base.yaml" \
        in note
    assert compose_noting(["mid.yaml", "mid.yaml"])[1].count("tasks.t") == 1  # a file again


def test_a_swept_train_key_wins_over_the_methods_override():
    """The sweep job gets overrides merged into train, then each trial sets its sampled value:
    an override of a swept key (a tuned file's lr) neither stops the sweep nor replaces samples."""
    from cmcl import stages
    from cmcl.sweep import apply

    p = params()
    p["overrides"]["dns"] = {"train": {"lr": 0.1}}
    p["sweep"]["space"]["train.lr"] = {"type": "float", "low": 0.001, "high": 0.1}
    job = stages.sweep(check(p)).values
    assert job["overrides"] == {} and job["train"]["lr"] == 0.1
    assert apply(job, {"train.lr": 0.002}, "dns")["train"]["lr"] == 0.002


def test_a_task_modality_its_corpus_json_does_not_declare_is_refused_at_startup(corpus):
    p = params()
    p["corpora"]["mine"] = {"path": str(corpus)}
    p["tasks"]["mine_tv"] = {"corpus": "mine", "modalities": ["text", "video"]}
    p["embed"]["encoders"]["video"] = "precomputed"
    with pytest.raises(ParamsError, match=r"tasks\.mine_tv\.modalities: 'video' is not a "
                                          r"modality of corpus 'mine' \(.*corpus\.json declares "
                                          r"\['audio', 'image', 'text'\]\)"):
        check(p)
    (corpus / "corpus.json").unlink()  # the manifest's columns decide, when sharding
    assert "mine_tv" in check(p)["tasks"]


def test_an_adapter_option_it_does_not_take_is_refused_at_startup(corpus):
    p = params()
    p["corpora"]["mine"] = {"path": str(corpus), "options": {"on_eror": "skip"}}
    with pytest.raises(ParamsError, match=r"corpora\.mine\.options\.on_eror: not an option of "
                                          r"adapter 'generic' \(did you mean 'on_error'\?\); "
                                          r"it takes \['on_error', 'verify'\]"):
        check(p)
    p["corpora"]["mine"]["options"] = {"on_error": "skip"}
    assert check(p)["corpora"]["mine"]["options"] == {"on_error": "skip"}
    p["corpora"]["mine"] = {"path": str(corpus), "adapter": "esc50", "options": {"fold": 1}}
    with pytest.raises(ParamsError, match=r"options\.fold: not an option of adapter 'esc50'.*"
                                          r"'test_fold'"):
        check(p)


def test_only_corpora_a_sequence_reads_must_exist(tmp_path):
    """Cutting a chain to some tasks leaves the other corpora's folders out."""
    p = params()
    p["corpora"]["elsewhere"] = {"path": str(tmp_path / "absent")}
    p["tasks"]["unused"] = {"corpus": "elsewhere", "modalities": ["text", "image"]}
    assert "elsewhere" in check(p)["corpora"]
    p["sequences"]["more"] = ["unused"]
    with pytest.raises(ParamsError, match=r"corpora\.elsewhere\.path: folder .* does not exist"):
        check(p)
