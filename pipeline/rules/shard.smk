rule corpus:
    """Materialise an embedded corpus (from installed packages) in the generic layout."""
    output:
        directory("data/raw/{corpus}"),
    params:
        cfg=get_corpus_cfg,
    conda:
        "../envs/cmcl.yaml"
    log:
        "logs/corpus/{corpus}.log",
    wildcard_constraints:
        corpus="|".join(BUILTIN_CORPORA) or "^$",
    shell:
        "python -m cmcl corpus --cfg {params.cfg:q} --out {output} > {log} 2>&1"


rule shard:
    """One task split -> WebDataset tars + sizes.json + meta.json."""
    input:
        get_corpus_dir,
    output:
        directory("data/shards/{task}/{split}"),
    params:
        cfg=get_shard_cfg,
    conda:
        "../envs/cmcl.yaml"
    log:
        "logs/shard/{task}_{split}.log",
    threads: config["shard"]["workers"]
    shell:
        "python -m cmcl shard --cfg {params.cfg:q} --split {wildcards.split} --out {output} "
        "--workers {threads} > {log} 2>&1"
