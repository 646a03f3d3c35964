"""Checks the Snakefile runs once, in the main Snakemake process, before any job starts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def python_on_path_problem() -> str | None:
    """Why the jobs' `python -m cmcl` would fail (the `python` on PATH lacks cmcl), or None.

    Running `.venv/bin/snakemake` without activating the venv leaves another `python` on PATH,
    and every job log then ends in `No module named cmcl`.
    """
    exe = shutil.which("python")
    here = Path(sys.executable).parent
    if exe and Path(exe).parent == here:
        return None  # the venv Snakemake runs from: it has cmcl
    if exe and subprocess.run([exe, "-c", "import cmcl"], capture_output=True).returncode == 0:
        return None
    activate = here / "activate"
    fix = f"source {activate}" if activate.exists() else "activate the environment with cmcl"
    found = f"`python` on PATH is {exe}" if exe else "there is no `python` on PATH"
    return (f"Snakefile: jobs run `python -m cmcl`, and {found}, which cannot import cmcl "
            f"(every job would fail with 'No module named cmcl'): run `{fix}` first")
