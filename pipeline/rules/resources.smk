# Equal memory, recorded: what every run's final step stores (samples, bytes of method state,
# extra trainable parameters), measured from the saved state; the report tabulates it.


rule resources:
    """Samples stored, bytes of state and extra parameters of every run's final step."""
    input:
        [f"results/runs/{q}/{m}/seed{s}/step{steps_for(q, m)[-1]}"
         for q in SEQUENCES for m in METHODS for s in SEEDS],
    output:
        "reports/resources.json",
    conda:
        "../envs/cmcl.yaml"
    log:
        "logs/report/resources.log",
    shell:
        "python -m cmcl resources --runs {input} --out {output} > {log} 2>&1"
