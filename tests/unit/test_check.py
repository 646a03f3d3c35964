import json

import pytest
from helpers.data import ROOT

from cmcl.check import expect, fingerprint, run_check
from cmcl.config import load


@pytest.fixture
def recorded(tmp_path):
    params = load(ROOT / "params.yaml")
    seq = next(iter(params["sequences"]))
    metrics = {seq: {"dns": {"map_final_avg": 88.8, "map_final_avg_std": 0.3, "map_bwt": -0.9,
                             "map_bwt_std": 0.15, "n_seeds": 3},
                     "finetune": {"map_final_avg": 84.2, "map_final_avg_std": 0.5,
                                  "map_bwt": -7.6, "map_bwt_std": 0.6, "n_seeds": 3}}}
    expect(metrics, params, tmp_path / "expected.yaml")
    return params, metrics, tmp_path


def write(path, metrics):
    path.write_text(json.dumps(metrics))
    return path


def test_identical_results_pass(recorded):
    params, metrics, d = recorded
    assert run_check(write(d / "m.json", metrics), params, d / "expected.yaml", d / "c.json")
    assert json.loads((d / "c.json").read_text())["ok"] is True


def test_dns_silently_degraded_to_finetune_turns_red(recorded):
    """The failure mode of the authors' pinned stack: the projection hook never runs."""
    params, metrics, d = recorded
    seq, = metrics
    broken = {seq: {**metrics[seq], "dns": dict(metrics[seq]["finetune"])}}
    assert not run_check(write(d / "m.json", broken), params, d / "expected.yaml", d / "c.json")
    rows = json.loads((d / "c.json").read_text())["rows"]
    assert {"method": "dns", "metric": "map_bwt", "status": "DEVIATES"}.items() <= next(
        r for r in rows if r.get("metric") == "map_bwt" and r["method"] == "dns").items()


def test_deliberate_params_change_is_not_checked(recorded):
    params, metrics, d = recorded
    seq, = metrics
    # epochs, not lr: the tuned file overrides each method's lr, so only shared keys reach dns
    changed = {**params, "train": {**params["train"], "epochs": 7}}
    assert fingerprint(changed, seq, "dns") != fingerprint(params, seq, "dns")
    assert fingerprint({**params, "methods": {**params["methods"], "gpm": {"x": 1}}}, seq,
                       "dns") == fingerprint(params, seq, "dns")  # others' options don't matter
    same = {**params, "shard": {**params["shard"], "workers": 4, "max_shard_mb": 50},
            "train": {**params["train"], "checkpoint_every": 100}}
    assert fingerprint(same, seq, "dns") == fingerprint(params, seq, "dns")  # not result-bearing
    dns_train = {**params["overrides"].get("dns", {}).get("train", {}), "epochs": 9}
    over = {**params, "overrides": {**params["overrides"], "dns": {"train": dns_train}}}
    assert fingerprint(over, seq, "dns") != fingerprint(params, seq, "dns")
    assert fingerprint(over, seq, "finetune") == fingerprint(params, seq, "finetune")
    broken = {seq: {**metrics[seq], "dns": dict(metrics[seq]["finetune"])}}
    assert run_check(write(d / "m.json", broken), changed, d / "expected.yaml", d / "c.json")
    assert json.loads((d / "c.json").read_text())["checked"] == 0  # ok, and says it checked none
    rows = json.loads((d / "c.json").read_text())["rows"]
    assert all(r["status"].startswith("not checked") for r in rows)


def test_shipped_expected_file_matches_default_params():
    """The expected file in the repo must belong to the current defaults, or it guards nothing."""
    import yaml

    params = load(ROOT / "params.yaml")
    expected = yaml.safe_load((ROOT / params["report"]["expected"]).read_text())
    for seq in params["sequences"]:
        for method in params["train"]["methods"]:
            assert expected[seq][method]["fingerprint"] == fingerprint(params, seq, method), \
                (seq, method)
