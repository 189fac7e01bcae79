# The comparison: variants x methods x label budgets x seeds (the `sweep` section of the config),
# one cached job each in results/sweep/<variant>/<method>/<budget>/<seed>/, then the tables and
# figures of layout.SWEEP_FILES in results/.
#   snakemake --cores 8 sweep
#   snakemake --cores 8 sweep --configfile workflow/presets/nct_crc_he_100k.yaml
SWEEP = config["sweep"]
SWEEP_DIR = "results/sweep/{variant}/{method}/{budget}/{seed}"
SWEEP_RUNS = [
    run
    for variant in PARAMS.sweep.variant_names()
    for run in expand(
        f"{SWEEP_DIR}/run.json",
        variant=variant,
        method=PARAMS.sweep.methods_of(variant),
        budget=[f"{b:g}" for b in SWEEP["budgets"]],
        seed=SWEEP["seeds"],
    )
]
SWEEP_STAGES = stages.sweep_stages()
SWEEP_CODE = stages.module_files("s5cl.pipeline.sweep", *(s.module for s in SWEEP_STAGES))


rule sweep:
    input:
        [str(layout.RESULTS / name) for name in layout.SWEEP_FILES],


rule sweep_run:
    input:
        SWEEP_CODE,
        paths([stages.PACKED]),
    output:
        f"{SWEEP_DIR}/run.json",
        f"{SWEEP_DIR}/metrics/evaluate.json",
    params:
        cached=cache_key(
            [*dict.fromkeys(k for s in SWEEP_STAGES for k in s.params), "suggest", "sweep.rounds"]
        ),
        variant=lambda wildcards: PARAMS.sweep.sets_of(wildcards.variant),
        out=lambda wildcards, output: os.path.dirname(output[0]),
    threads: threads_of("sweep_run")
    resources:
        **resources_of("sweep_run"),
    log:
        "logs/sweep/{variant}/{method}/{budget}/{seed}.log",
    conda:
        "../envs/s5cl.yaml"
    shell:
        'python -m s5cl.pipeline.sweep --params "$S5CL_PARAMS" run --variant {wildcards.variant}'
        " --method {wildcards.method}"
        " --budget {wildcards.budget} --seed {wildcards.seed} --out {params.out} > {log} 2>&1"


rule sweep_aggregate:
    input:
        stages.module_files("s5cl.pipeline.sweep"),
        runs=SWEEP_RUNS,
    output:
        [str(layout.RESULTS / name) for name in layout.SWEEP_FILES],
    params:
        cached=cache_key(["sweep"]),
    threads: threads_of("sweep_aggregate")
    resources:
        **resources_of("sweep_aggregate"),
    log:
        "logs/sweep/aggregate.log",
    conda:
        "../envs/s5cl.yaml"
    shell:
        'python -m s5cl.pipeline.sweep --params "$S5CL_PARAMS" aggregate --out results {input.runs}'
        " > {log} 2>&1"
