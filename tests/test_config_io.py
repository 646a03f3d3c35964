import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cmcl.config import ParamsError, check, load
from cmcl.io import atomic_path, load_tensors, read_json, save_tensors, write_json

ROOT = Path(__file__).resolve().parents[1]


def params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


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


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_killed_writer_leaves_no_final_file(tmp_path):
    """A process killed mid-write (SIGKILL) never leaves a file under the final name."""
    target = tmp_path / "big.json"
    code = (f"from cmcl.io import atomic_path\nimport time\n"
            f"with atomic_path({str(target)!r}) as t:\n"
            f"    f = open(t, 'w'); f.write('x' * 1000); f.flush(); print('ready', flush=True)\n"
            f"    time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not target.exists()


def test_json_and_tensor_round_trip_and_errors(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    assert read_json(tmp_path / "a.json") == {"x": 1}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        read_json(tmp_path / "bad.json")
    save_tensors(tmp_path / "t.safetensors", {"w": torch.ones(2, 3)})
    assert torch.equal(load_tensors(tmp_path / "t.safetensors")["w"], torch.ones(2, 3))
    torch.save({"w": torch.ones(2)}, tmp_path / "pickled.safetensors")  # a pickle in disguise
    with pytest.raises(ValueError, match="pickled.safetensors: not a valid safetensors file"):
        load_tensors(tmp_path / "pickled.safetensors")


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
