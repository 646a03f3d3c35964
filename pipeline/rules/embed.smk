rule embed:
    """Frozen encoders turn a shard folder into feature shards (.npy per modality)."""
    input:
        "data/shards/{task}/{split}",
    output:
        directory("data/features/{task}/{split}"),
    params:
        cfg=get_embed_cfg,
    conda:
        "../envs/cmcl.yaml"
    log:
        "logs/embed/{task}_{split}.log",
    benchmark:
        "results/benchmarks/embed/{task}_{split}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "OMP_NUM_THREADS={threads} python -m cmcl embed --cfg {params.cfg:q} --shards {input} "
        "--out {output} > {log} 2>&1"
