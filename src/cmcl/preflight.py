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


_HELD: list = []  # the open lock file: the lock lasts as long as this Snakemake process


def run_lock_problem(argv: list[str], folder: str | Path = ".snakemake") -> str | None:
    """Take the project's run lock for a Snakemake call that may run jobs, or say who holds it.

    Snakemake 9's lock clean-up deletes the whole `.snakemake/locks` folder at the end of any
    run, a no-op one included, so a second call would run the jobs of a first one again while
    they run. Calls that run nothing (dry runs, --lint, --list, --summary, reports, --unlock)
    pass; any other stops at once, naming the running one. The kernel drops the
    lock when its holder dies, so a killed run never leaves it behind.
    """
    import fcntl
    import os

    from snakemake.cli import get_argument_parser

    args, _ = get_argument_parser().parse_known_args(argv)
    if args.dryrun or args.unlock or args.lint or args.list_target_rules or args.summary \
            or args.detailed_summary or args.report or args.dag or args.rulegraph \
            or args.list_changes:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / "cmcl-run.lock"
    f = open(path, "a+")  # noqa: SIM115 (held open for the process's lifetime)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        return (f"Snakefile: another Snakemake run is in progress in this folder ({holder}, "
                f"lock {path}); wait for it to end (a second call would run its jobs again), "
                "or use `snakemake -n` to look")
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}: {' '.join(['snakemake', *argv])}\n")
    f.flush()
    _HELD.append(f)
    return None
