"""docs/faults.md cites the test of every fault case: each cited test must exist."""

from __future__ import annotations

import re

from helpers.data import ROOT


def test_fault_table_cites_existing_tests():
    text = (ROOT / "docs/faults.md").read_text()
    cited = set(re.findall(r"((?:\w+/)*test_\w+\.py)::(test_\w+)", text))  # unit/test_x.py
    assert len(cited) > 30
    missing = [f"{f}::{t}" for f, t in sorted(cited)
               if not re.search(rf"^def {t}\(", (ROOT / "tests" / f).read_text(), re.M)]
    assert not missing, f"docs/faults.md cites tests that do not exist: {missing}"
