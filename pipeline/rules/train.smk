rule init:
    """Step 0: the untrained heads every run of (sequence, method, seed) starts from."""
    input:
        get_init_features,
    output:
        directory("results/runs/{sequence}/{method}/seed{seed}/step0"),
    params:
        cfg=get_model_cfg,
    conda:
        "../envs/cmcl.yaml"
    log:
        "logs/init/{sequence}/{method}_seed{seed}.log",
    shell:
        "python -m cmcl init --cfg {params.cfg:q} --method {wildcards.method} "
        "--seed {wildcards.seed} --features {input} --out {output} > {log} 2>&1"


rule train:
    """Step t: load model + method state of step t-1, train on task t, save both."""
    input:
        unpack(get_train_inputs),
    output:
        directory("results/runs/{sequence}/{method}/seed{seed}/step{step}"),
    params:
        cfg=get_train_cfg,
        # no rerun trigger: a params function of the job's resources is derived (common.smk)
        checkpoint_every=get_checkpoint_every,
    conda:
        "../envs/cmcl.yaml"
    log:
        "logs/train/{sequence}/{method}_seed{seed}_step{step}.log",
    benchmark:
        "results/benchmarks/train/{sequence}/{method}_seed{seed}_step{step}.tsv"
    wildcard_constraints:
        step="[1-9][0-9]*",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "OMP_NUM_THREADS={threads} python -m cmcl train --cfg {params.cfg:q} "
        "--method {wildcards.method} --seed {wildcards.seed} --step {wildcards.step} "
        "--checkpoint-every {params.checkpoint_every} "
        "--features {input.features} --prev {input.prev} --out {output} > {log} 2>&1"
