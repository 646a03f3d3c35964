rule embed:
    """Frozen encoders turn a shard folder into feature shards (.npy per modality); with
    embed.processes > 1 under torchrun (Accelerate's process group; one GPU per process)."""
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
    wildcard_constraints:
        task="|".join(EMBEDDED) or "^$",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        # not a param: the feature bytes do not depend on how many processes encode them
        processes=config["embed"].get("processes", 1),
    shell:
        "if [ {resources.processes} -gt 1 ]; then "
        "RUN='torchrun --standalone --nproc_per_node {resources.processes}'; else RUN=python; fi; "
        "OMP_NUM_THREADS={threads} $RUN -m cmcl embed --cfg {params.cfg:q} --shards {input} "
        "--out {output} > {log} 2>&1"


rule import_features:
    """Pre-extracted features (corpus adapter features_h5) -> feature shards, no shard/embed."""
    input:
        get_corpus_dir,
    output:
        directory("data/features/{task}/{split}"),
    params:
        cfg=get_shard_cfg,
    conda:
        "../envs/cmcl.yaml"
    log:
        "logs/import/{task}_{split}.log",
    wildcard_constraints:
        task="|".join(IMPORTED) or "^$",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m cmcl import-features --cfg {params.cfg:q} --split {wildcards.split} "
        "--out {output} > {log} 2>&1"
