# The tuning matrix: `snakemake --cores 2 tune`. One Optuna study per (sequence, method), each
# with tune.n_trials trials from the method file's own search space, run by tune.n_workers
# worker jobs (Slurm jobs under the slurm profile) on the study's own journal; tune_export
# writes one params override per sequence (review it, then copy it to pipeline/params/tuned/).
import cmcl.tuning as cmcl_tuning

TUNE_MATRIX = cmcl_tuning.tune_matrix(config)


rule tune_worker:
    """Run trials of one (sequence, method) study until it holds tune.n_trials."""
    input:
        get_train_features,
    output:
        "results/tune/{sequence}/{method}/worker{worker}.json",
    params:
        cfg=get_tune_cfg,
        journal=get_tune_journal,
    conda:
        "../envs/cmcl.yaml"
    log:
        "logs/tune/{sequence}/{method}_worker{worker}.log",
    benchmark:
        "results/benchmarks/tune/{sequence}/{method}_worker{worker}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    shell:
        "OMP_NUM_THREADS={threads} python -m cmcl sweep-worker --cfg {params.cfg:q} "
        "--journal {params.journal} --worker {wildcards.worker} --out {output} > {log} 2>&1"


rule tune_best:
    """The study's best values, its figures, and test scores of best and default values."""
    input:
        workers=get_tune_workers,
        train=get_train_features,
        test=get_test_features,
    output:
        summary="reports/tune/{sequence}/{method}/summary.json",
        best="reports/tune/{sequence}/{method}/best.yaml",
        history="reports/tune/{sequence}/{method}/history.png",
        importances="reports/tune/{sequence}/{method}/importances.png",
        slice="reports/tune/{sequence}/{method}/slice.png",
    params:
        cfg=get_tune_cfg,
        journal=get_tune_journal,
        out_dir=get_out_dir,
    conda:
        "../envs/cmcl.yaml"
    log:
        "logs/tune/{sequence}/{method}_best.log",
    shell:
        "python -m cmcl sweep-best --cfg {params.cfg:q} --journal {params.journal} "
        "--out-dir {params.out_dir} > {log} 2>&1"


rule tune_export:
    """One params override per sequence with the record of every study."""
    input:
        get_tune_summaries,
    output:
        "reports/tune/{sequence}/tuned.yaml",
    params:
        cfg=get_tune_export_cfg,
        methods=get_tune_methods,
    conda:
        "../envs/cmcl.yaml"
    log:
        "logs/tune/{sequence}/export.log",
    shell:
        "python -m cmcl tune-export --cfg {params.cfg:q} --sequence {wildcards.sequence} "
        "--methods {params.methods} --summaries {input} --out {output} > {log} 2>&1"


rule tune:
    """Target: every sequence's tuned file."""
    input:
        expand("reports/tune/{sequence}/tuned.yaml", sequence=dict.fromkeys(s for s, _ in TUNE_MATRIX)),
