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
    threads: TORCH_THREADS
    log:
        "logs/warmup.log",
    conda:
        "../envs/s5cl.yaml"
    shell:
        "python stages/warmup.py {params.sets} 2>&1 | tee {log}"


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
    threads: TORCH_THREADS
    log:
        "logs/s5cl.log",
    conda:
        "../envs/s5cl.yaml"
    shell:
        "python stages/s5cl.py {params.sets} 2>&1 | tee {log}"


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
    threads: TORCH_THREADS
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
    threads: TORCH_THREADS
    log:
        "logs/retrain.log",
    conda:
        "../envs/s5cl.yaml"
    shell:
        "python stages/retrain.py {params.sets} 2>&1 | tee {log}"
