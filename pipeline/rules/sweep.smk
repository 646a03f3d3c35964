# Optuna sweeps: `snakemake --cores 2 sweep`. Each worker is one job (one Slurm job on a
# cluster) running trials until the study holds sweep.n_trials; sweep_best exports best.yaml.
STUDY = config["sweep"]["study"] if config.get("sweep") else None
SWEEP_SEQ = config["sweep"]["sequence"] if config.get("sweep") else next(iter(SEQUENCES))


rule sweep_worker:
    """Run trials of the study (train the chain in-process, score on validation)."""
    input:
        features(SWEEP_SEQ, "train"),
    output:
        "results/sweep/{study}/worker{worker}.json",
    params:
        cfg=get_sweep_cfg,
        journal=get_sweep_journal,
    conda:
        "../envs/cmcl.yaml"
    log:
        "logs/sweep/{study}_worker{worker}.log",
    benchmark:
        "results/benchmarks/sweep/{study}_worker{worker}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    shell:
        "OMP_NUM_THREADS={threads} python -m cmcl sweep-worker --cfg {params.cfg:q} "
        "--journal {params.journal} --worker {wildcards.worker} --out {output} > {log} 2>&1"


rule sweep_best:
    """best.yaml (a params override), figures, and the test scores of the best params."""
    input:
        workers=get_sweep_workers,
        train=features(SWEEP_SEQ, "train"),
        test=features(SWEEP_SEQ, "test"),
    output:
        best="reports/sweep/{study}/best.yaml",
        summary="reports/sweep/{study}/summary.json",
        history=report("reports/sweep/{study}/history.png", category="Sweep"),
        importances=report("reports/sweep/{study}/importances.png", category="Sweep"),
        slice=report("reports/sweep/{study}/slice.png", category="Sweep"),
    params:
        cfg=get_sweep_cfg,
        journal=get_sweep_journal,
        out_dir=get_out_dir,
        sources=get_sweep_sources,
    conda:
        "../envs/cmcl.yaml"
    log:
        "logs/sweep/{study}_best.log",
    shell:
        "python -m cmcl sweep-best --cfg {params.cfg:q} --journal {params.journal} "
        "--out-dir {params.out_dir} --sources {params.sources:q} > {log} 2>&1"


rule sweep:
    """Target: the configured study's best params."""
    input:
        [f"reports/sweep/{STUDY}/best.yaml"] if STUDY else [],
