rule evaluate:
    """Every task's test split after step t (step 0 = before training)."""
    input:
        model="results/runs/{method}/seed{seed}/step{step}",
        features=train_features("test"),
    output:
        "results/eval/{method}/seed{seed}/step{step}.parquet",
    params:
        cfg=get_eval_cfg,
    conda:
        "../envs/cmcl.yaml"
    log:
        "logs/evaluate/{method}_seed{seed}_step{step}.log",
    threads: 1
    shell:
        "OMP_NUM_THREADS={threads} python -m cmcl evaluate --cfg {params.cfg:q} "
        "--model {input.model} --features {input.features} --out {output} > {log} 2>&1"
