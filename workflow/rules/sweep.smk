# The comparison: methods x label budgets x seeds (the `sweep` section of the config), one
# cached job each in results/sweep/<method>/<budget>/<seed>/, then one table and one figure.
#   snakemake --cores 8 sweep
#   snakemake --cores 8 sweep --configfile workflow/presets/nct_crc_he_100k.yaml
SWEEP = config["sweep"]
SWEEP_DIR = "results/sweep/{method}/{budget}/{seed}"
SWEEP_RUNS = expand(
    f"{SWEEP_DIR}/run.json",
    method=SWEEP["methods"],
    budget=[f"{b:g}" for b in SWEEP["budgets"]],
    seed=SWEEP["seeds"],
)
SWEEP_CODE = TRAIN_CODE + [
    "src/s5cl/sweep.py",
    "src/s5cl/pipeline.py",
    "src/s5cl/metrics.py",
    "src/s5cl/pseudo.py",
    "src/s5cl/datasets/split.py",
]


rule sweep:
    input:
        "results/summary.csv",
        "results/summary.md",
        "results/budget_curve.png",


rule sweep_run:
    input:
        SWEEP_CODE,
        PACKED,
    output:
        f"{SWEEP_DIR}/run.json",
        f"{SWEEP_DIR}/metrics/evaluate.json",
    params:
        sets=stage_args(*[s for s in config if s not in ("sweep", "resources")]),
        out=lambda wildcards, output: os.path.dirname(output[0]),
    threads: threads_of("sweep_run")
    resources:
        **resources_of("sweep_run"),
    log:
        "logs/sweep/{method}/{budget}/{seed}.log",
    conda:
        "../envs/s5cl.yaml"
    shell:
        "python -m s5cl.sweep {params.sets} run --method {wildcards.method}"
        " --budget {wildcards.budget} --seed {wildcards.seed} --out {params.out} > {log} 2>&1"


rule sweep_aggregate:
    input:
        "src/s5cl/sweep.py",
        runs=SWEEP_RUNS,
    output:
        "results/summary.csv",
        "results/summary.md",
        "results/budget_curve.png",
    params:
        sets=" ".join(
            f"--set {shlex.quote(f'sweep.{key}={json.dumps(value)}')}"
            for key, value in SWEEP.items()
        ),
    threads: threads_of("sweep_aggregate")
    resources:
        **resources_of("sweep_aggregate"),
    log:
        "logs/sweep/aggregate.log",
    conda:
        "../envs/s5cl.yaml"
    shell:
        "python -m s5cl.sweep {params.sets} aggregate --out results {input.runs} > {log} 2>&1"
