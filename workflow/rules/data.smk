rule download:
    input:
        "stages/download.py",
        "src/s5cl/datasets/registry.py",
        "src/s5cl/datasets/fetch.py",
        "src/s5cl/datasets/archive.py",
        "src/s5cl/datasets/npz.py",
    output:
        directory(RAW),
    params:
        sets=stage_args("data"),
    threads: threads_of("download")
    resources:
        **resources_of("download"),
    log:
        "logs/download.log",
    conda:
        "../envs/s5cl.yaml"
    shell:
        "python stages/download.py {params.sets} 2>&1 | tee {log}"


rule prepare:
    input:
        "stages/prepare.py",
        "src/s5cl/datasets/prepare.py",
        "src/s5cl/datasets/npz.py",
        RAW,
    output:
        directory(PACKED),
    params:
        sets=stage_args("data"),
    threads: threads_of("prepare")
    resources:
        **resources_of("prepare"),
    log:
        "logs/prepare.log",
    conda:
        "../envs/s5cl.yaml"
    shell:
        "python stages/prepare.py {params.sets} 2>&1 | tee {log}"


rule split:
    input:
        "stages/split.py",
        "src/s5cl/datasets/split.py",
        PACKED,
    output:
        SPLIT,
    params:
        sets=stage_args("seed", "data", "split"),
    threads: threads_of("split")
    resources:
        **resources_of("split"),
    log:
        "logs/split.log",
    conda:
        "../envs/s5cl.yaml"
    shell:
        "python stages/split.py {params.sets} 2>&1 | tee {log}"
