"""Running the project's Snakemake in a test folder with the venv on PATH, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def snakemake(d: Path, *args: str) -> subprocess.CompletedProcess:
    """`snakemake *args` in folder d; `.out` is stdout + stderr (Snakemake logs errors on
    stdout)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    p = subprocess.run([str(Path(sys.executable).parent / "snakemake"), *args], cwd=d,
                       env=env, capture_output=True, text=True, timeout=600)
    p.out = p.stdout + p.stderr
    return p
