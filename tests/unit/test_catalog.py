"""The torch-free method catalog equals the registry, and the params check never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers.data import ROOT

from cmcl import catalog


def test_catalog_equals_registry_fresh_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("CMCL_CACHE_DIR", str(tmp_path))
    catalog._MEMO.clear()
    built = catalog.methods()
    files = list(tmp_path.glob("methods-*.json"))
    assert len(files) == 1
    catalog._MEMO.clear()
    assert catalog.methods() == built == catalog.from_registry()
    assert built["joint"].joint and not built["dns"].joint
    assert "threshold_in" in built["dns"].first_step_ignores


def test_stale_or_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("CMCL_CACHE_DIR", str(tmp_path))
    catalog._MEMO.clear()
    (tmp_path / f"methods-{catalog.sources_key()}.json").write_text("{not json")
    assert catalog.methods() == catalog.from_registry()
    json.loads((tmp_path / f"methods-{catalog.sources_key()}.json").read_text())
    catalog._MEMO.clear()


def test_params_check_does_not_import_torch(tmp_path):
    """Snakemake parses the workflow in every job: torch at parse time would slow each one."""
    code = ("import sys, cmcl.config as c; c.load('params.yaml'); "
            "print('torch' in sys.modules)")
    env = {"CMCL_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)  # fills cache
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "False"


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


def test_every_method_declares_a_space_of_its_own_options():
    for name, info in catalog.methods().items():
        assert info.space, f"{name} declares no search space"
        assert "train.lr" in info.space, f"{name}: the shared lr is tuned for every method"
        props = info.options.get("properties", {})
        assert all(k in props or k.startswith("train.") for k in info.space), name
    assert set(catalog.methods()["finetune"].space) == {"train.lr"} == set(
        catalog.methods()["joint"].space)
