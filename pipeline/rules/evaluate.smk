rule evaluate:
    """Every task's test split after every step of one run (step 0 = before training).

    One job per run, not per step: a job is ~1.5 s of CPU of which the evaluation of a step is
    ~0.1 s; the folder holds step<t>.parquet for each step."""
    input:
        models=get_eval_models,
        features=get_eval_features,
    output:
        directory("results/eval/{sequence}/{method}/seed{seed}"),
    params:
        cfg=get_eval_cfg,
    conda:
        "../envs/cmcl.yaml"
    log:
        "logs/evaluate/{sequence}/{method}_seed{seed}.log",
    benchmark:
        "results/benchmarks/evaluate/{sequence}/{method}_seed{seed}.tsv"
    threads: 1
    shell:
        "OMP_NUM_THREADS={threads} python -m cmcl evaluate --cfg {params.cfg:q} "
        "--model {input.models} --features {input.features} --out-dir {output} > {log} 2>&1"
