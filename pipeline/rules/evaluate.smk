rule evaluate:
    """Every task's test split after step t (step 0 = before training)."""
    input:
        model="results/runs/{sequence}/{method}/seed{seed}/step{step}",
        features=get_eval_features,
    output:
        "results/eval/{sequence}/{method}/seed{seed}/step{step}.parquet",
    params:
        cfg=get_eval_cfg,
    conda:
        "../envs/cmcl.yaml"
    log:
        "logs/evaluate/{sequence}/{method}_seed{seed}_step{step}.log",
    threads: 1
    shell:
        "OMP_NUM_THREADS={threads} python -m cmcl evaluate --cfg {params.cfg:q} "
        "--model {input.model} --features {input.features} --out {output} > {log} 2>&1"
