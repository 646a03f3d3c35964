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
    """Snakemake parses the workflow in every job: torch at parse time costs seconds each."""
    code = ("import sys, cmcl.config as c; c.load('params.yaml'); "
            "print('torch' in sys.modules)")
    env = {"CMCL_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)  # fills cache
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "False"
