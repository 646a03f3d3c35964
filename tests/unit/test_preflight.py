"""The run lock: a second run of a project folder is refused while dry runs and --unlock pass."""

from __future__ import annotations

import subprocess
import sys

from helpers.run_lock import HOLD

from cmcl.preflight import run_lock_problem


def test_a_second_run_is_refused_while_dry_runs_pass(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        problem = run_lock_problem(["--cores", "2"], tmp_path)
        assert problem and f"pid {holder.pid}" in problem and "in progress" in problem
        for argv in (["-n"], ["-np", "--cores", "1"], ["--unlock"], ["--lint"], ["--summary"]):
            assert run_lock_problem(argv, tmp_path) is None, argv
    finally:
        holder.kill()  # a killed holder leaves no lock behind: the kernel drops it
        holder.wait()
    assert run_lock_problem(["--cores", "2"], tmp_path) is None
