rule report:
    """Accuracy matrices, continual-learning metrics, plots and report.md over all runs."""
    input:
        evals=all_evals(),
        features=all_features("train") + all_features("test"),
        resources="reports/resources.json",
        tuned=config["tuned"] or [],
    output:
        metrics="reports/metrics.json",
        md="reports/report.md",
        html="reports/report.html",
        curves=report(
            expand("reports/plots/{sequence}/scores_over_steps.png", sequence=SEQUENCES),
            caption="../report/scores_over_steps.rst",
            category="Continual learning",
        ),
        scatter=report(
            expand("reports/plots/{sequence}/stability_plasticity.png", sequence=SEQUENCES),
            caption="../report/stability_plasticity.rst",
            category="Continual learning",
        ),
        matrices=report(
            expand(
                "reports/plots/{sequence}/acc_matrix_{method}.png",
                sequence=SEQUENCES,
                method=METHODS,
            ),
            caption="../report/acc_matrix.rst",
            category="Accuracy matrices",
        ),
        csv=["reports/plots/scores_over_steps.csv", "reports/plots/stability_plasticity.csv"],
    params:
        cfg=get_report_cfg,
        out_dir=get_out_dir,
    conda:
        "../envs/cmcl.yaml"
    log:
        "logs/report/report.log",
    shell:
        "python -m cmcl report --cfg {params.cfg:q} --evals {input.evals} "
        "--features {input.features} --resources {input.resources} "
        + ("--tuned {input.tuned} " if config["tuned"] else "")
        + "--out-dir {params.out_dir} "
        "> {log} 2>&1"


rule check:
    """Reproduction guard: fail loudly when results deviate from the expected file."""
    input:
        metrics="reports/metrics.json",
        expected=config["report"]["expected"] or [],
    output:
        "reports/check.json",
    params:
        cfg=get_check_cfg,
    conda:
        "../envs/cmcl.yaml"
    log:
        "logs/report/check.log",
    shell:
        "python -m cmcl check --cfg {params.cfg:q} --metrics {input.metrics} "
        "--expected {input.expected} --out {output} > {log} 2>&1"
