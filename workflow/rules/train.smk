rule warmup:
    input:
        "stages/warmup.py",
        TRAIN_CODE,
        PACKED,
        SPLIT,
    output:
        model="models/warmup.pt",
        metrics="metrics/warmup/metrics.json",
    params:
        sets=stage_args("seed", "method", "data", "model", "augment", "compute", "warmup"),
        launch=launcher("warmup"),
    threads: threads_of("warmup")
    resources:
        **resources_of("warmup"),
    log:
        "logs/warmup.log",
    conda:
        "../envs/s5cl.yaml"
    shell:
        "{params.launch} stages/warmup.py {params.sets} 2>&1 | tee {log}"


rule s5cl:
    input:
        "stages/s5cl.py",
        TRAIN_CODE,
        PACKED,
        SPLIT,
        "models/warmup.pt",
    output:
        model="models/s5cl.pt",
        metrics="metrics/s5cl/metrics.json",
    params:
        sets=stage_args("seed", "method", "data", "augment", "compute", "s5cl", "fixmatch"),
        launch=launcher("s5cl"),
    threads: threads_of("s5cl")
    resources:
        **resources_of("s5cl"),
    log:
        "logs/s5cl.log",
    conda:
        "../envs/s5cl.yaml"
    shell:
        "{params.launch} stages/s5cl.py {params.sets} 2>&1 | tee {log}"


rule pseudolabel:
    input:
        "stages/pseudolabel.py",
        "src/s5cl/pseudo.py",
        "src/s5cl/models.py",
        "src/s5cl/device.py",
        PACKED,
        SPLIT,
        "models/s5cl.pt",
    output:
        pseudo="data/pseudo/pseudo.parquet",
        metrics="metrics/pseudolabel.json",
    params:
        sets=stage_args("data", "compute", "pseudolabel"),
    threads: threads_of("pseudolabel")
    resources:
        **resources_of("pseudolabel"),
    log:
        "logs/pseudolabel.log",
    conda:
        "../envs/s5cl.yaml"
    shell:
        "python stages/pseudolabel.py {params.sets} 2>&1 | tee {log}"


rule retrain:
    input:
        "stages/retrain.py",
        TRAIN_CODE,
        PACKED,
        SPLIT,
        "models/s5cl.pt",
        "data/pseudo/pseudo.parquet",
    output:
        model="models/final.pt",
        metrics="metrics/retrain/metrics.json",
    params:
        sets=stage_args("seed", "method", "data", "augment", "compute", "s5cl", "fixmatch", "retrain"),
        launch=launcher("retrain"),
    threads: threads_of("retrain")
    resources:
        **resources_of("retrain"),
    log:
        "logs/retrain.log",
    conda:
        "../envs/s5cl.yaml"
    shell:
        "{params.launch} stages/retrain.py {params.sets} 2>&1 | tee {log}"
