"""A process that takes the run lock of a folder and holds it: a running Snakemake's stand-in."""

HOLD = """
import sys, time
from cmcl.preflight import run_lock_problem
assert run_lock_problem(["--cores", "1"], sys.argv[1]) is None
print("held", flush=True)
time.sleep(60)
"""
