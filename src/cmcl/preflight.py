"""Checks the Snakefile runs once, in the main Snakemake process, before any job starts."""

from __future__ import annotations

import re
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


FAILED_RULE = re.compile(r"^Error in rule (\S+):$")
JOB_LOG = re.compile(r"^\s+log: (.+?) \(check log file")


def failed_job_errors(snakemake_logs: list[str] | str, lines: int = 3) -> str:
    """What the failed jobs said, for the console: for each `log:` of an `Error in rule` in
    Snakemake's own log, that job log's error lines (cmcl names the file, key or sample there),
    since plain `snakemake` prints only the shell command and where the log is."""
    out: list[str] = []
    seen: set[str] = set()
    for path in [snakemake_logs] if isinstance(snakemake_logs, str) else snakemake_logs:
        try:
            text = Path(path).read_text(errors="replace").splitlines()
        except OSError:
            continue
        rule = None
        for line in text:
            if m := FAILED_RULE.match(line):
                rule = m.group(1)
            elif rule and (m := JOB_LOG.match(line)):
                for log in (s.strip() for s in m.group(1).split(",")):
                    if log in seen:
                        continue
                    seen.add(log)
                    try:
                        said = [s for s in Path(log).read_text(errors="replace").splitlines()
                                if s.strip()]
                    except OSError:
                        said = ["(no log file written)"]
                    errors = [s for s in said if s.startswith("cmcl ") and "error" in s]
                    out.append(f"cmcl: rule {rule} failed; {log} says:")
                    out += [f"  {s}" for s in (errors or said)[-lines:]]
                rule = None
    return "\n".join(out)
