# cmcl workflow: corpus -> shards -> features -> chained training steps -> evaluation -> report.
# The DAG lives here only; dvc.yaml calls these targets. Settings: params.yaml (override with
# `snakemake --configfile my.yaml`), cluster settings: pipeline/profiles/.

import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")  # the API used below (workflow.config_settings, executor plugins); 9.27 pinned

from cmcl.config import ParamsError, check, compose_noting, read_params, sources
from cmcl.preflight import python_on_path_problem, run_lock_problem

if workflow.is_main_process and (problem := python_on_path_problem()
                                 or run_lock_problem(sys.argv[1:])):
    sys.exit(problem)
try:
    if Path("params.yaml").exists():  # Snakemake's loading names no line, keeps duplicate keys
        read_params("params.yaml")
except ParamsError as e:
    sys.exit(str(e))

configfile: "params.yaml"
report: "pipeline/report/workflow.rst"  # the front page of `snakemake --report report.html`

try:  # a bad value stops here with key-named lines, not a traceback
    if workflow.overwrite_configfiles:
        # --configfile files merge over params.yaml unless one says `extends` (null: alone)
        config, note = compose_noting(workflow.overwrite_configfiles,
                                      extra=workflow.config_settings.config)
        if note and workflow.is_main_process:  # once, not again in every job's own parse
            print(note, file=sys.stderr)
    config = check(config, "pipeline/schemas/params.schema.yaml",
                   source=sources(workflow.overwrite_configfiles))  # e.g. params.yaml + my.yaml
except ParamsError as e:
    sys.exit(str(e))


include: "pipeline/rules/common.smk"
include: "pipeline/rules/shard.smk"
include: "pipeline/rules/embed.smk"
include: "pipeline/rules/train.smk"
include: "pipeline/rules/evaluate.smk"
include: "pipeline/rules/report.smk"
include: "pipeline/rules/sweep.smk"
include: "pipeline/rules/tune.smk"
include: "pipeline/rules/resources.smk"

# On a cluster these run in the submitting snakemake, not as jobs: targets, and a few seconds of
# JSON each (a cluster job's queueing and two Snakemake start-ups would cost more than the work).
localrules: all, check, resources, sweep, tune, tune_export


onerror:  # plain `snakemake` prints only where a failed job's log is: print what it says
    from cmcl.preflight import failed_job_errors

    print(failed_job_errors(log), file=sys.stderr)


rule all:
    input:
        "reports/metrics.json",
        "reports/report.md",
        ["reports/check.json"] if config["report"]["expected"] else [],
    default_target: True
