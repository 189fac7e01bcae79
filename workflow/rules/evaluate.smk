rule evaluate:
    input:
        "stages/evaluate.py",
        "src/s5cl/metrics.py",
        "src/s5cl/models.py",
        "src/s5cl/device.py",
        PACKED,
        SPLIT,
        "models/warmup.pt",
        "models/s5cl.pt",
        "models/final.pt",
    output:
        metrics="metrics/evaluate.json",
        predictions="metrics/predictions.csv",
        plots=directory("plots"),
    params:
        sets=stage_args("data", "compute", "evaluate"),
    threads: threads_of("evaluate")
    resources:
        **resources_of("evaluate"),
    log:
        "logs/evaluate.log",
    conda:
        "../envs/s5cl.yaml"
    shell:
        "python stages/evaluate.py {params.sets} 2>&1 | tee {log}"


rule report:
    input:
        "stages/report.py",
        "src/s5cl/report.py",
        PACKED,
        SPLIT,
        "data/pseudo/pseudo.parquet",
        "models/final.pt",
        "metrics/evaluate.json",
        "metrics/pseudolabel.json",
        "plots",
    output:
        "report/index.html",
    params:
        sets=stage_args("seed", "data", "compute", "pseudolabel", "evaluate"),
    threads: threads_of("report")
    resources:
        **resources_of("report"),
    log:
        "logs/report.log",
    conda:
        "../envs/s5cl.yaml"
    shell:
        "python stages/report.py {params.sets} 2>&1 | tee {log}"
