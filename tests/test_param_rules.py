"""Parameters that pass the schema but cannot do what they say are refused at start-up, naming
the key: thresholds out of range for their mode, duplicate YAML keys, silent merges."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cmcl.config import ParamsError, check

ROOT = Path(__file__).resolve().parents[1]


def params(**methods) -> dict:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["methods"].update(methods)
    return p


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


def test_rules_run_from_the_catalog_without_torch(tmp_path):
    """The Snakefile's parse must not import torch; the rules travel in the option schemas."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods:\n  dns: {threshold_mode: energy, threshold_in: 1.5}\n")
    code = ("import sys\nfrom cmcl.catalog import methods\nmethods()\n"  # warm the cache
            "for k in [k for k in sys.modules if k.startswith(('torch', 'cmcl.strategies'))]:\n"
            "    del sys.modules[k]\n"
            "import builtins\nreal = builtins.__import__\n"
            "def guard(name, *a, **k):\n"
            "    assert not name.startswith('torch'), 'torch imported'\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = guard\n"
            "from cmcl.cli import main\n"
            f"sys.exit(main(['validate', {str(bad)!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1, r.stderr
    assert "methods.dns.threshold_in: 1.5 is greater than the maximum of 1" in r.stderr


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
