import json
import os
import shlex

DATASET = config["data"]["name"]
RAW = f"data/raw/{DATASET}"
PACKED = f"data/packed/{DATASET}"
SPLIT = "data/splits/split.parquet"
TRAIN_CODE = [
    "src/s5cl/pipeline.py",
    "src/s5cl/train.py",
    "src/s5cl/methods.py",
    "src/s5cl/losses.py",
    "src/s5cl/augment.py",
    "src/s5cl/models.py",
    "src/s5cl/device.py",
    "src/s5cl/distributed.py",
    "src/s5cl/datasets/streams.py",
]


def stage_args(*sections):
    """`--set` flags carrying the config's values of `sections` to a stage script, so
    `snakemake --config ...` overrides reach it and a changed value reruns the rule."""

    def flatten(prefix, value):
        if isinstance(value, dict):
            for key, child in value.items():
                yield from flatten(f"{prefix}.{key}", child)
        else:
            yield prefix, value

    flags = []
    for section in sections:
        for key, value in flatten(section, config[section]):
            flags.append(f"--set {shlex.quote(f'{key}={json.dumps(value)}')}")
    return " ".join(flags)


def threads_of(rule):
    """The rule's `resources` cpus, but no more cores than this machine gives the process
    (Snakemake also caps them at --cores). Snakemake sets OMP_NUM_THREADS to this, and torch
    results depend on the thread count: torch rules default to 8 so that, like `dvc repro`,
    they use every core here and both give the same bits."""
    return min(PARAMS.resources.of(rule).cpus, len(os.sched_getaffinity(0)))


def resources_of(rule):
    """The rule's `resources` (params.yaml) as Snakemake resources, which the SLURM executor
    turns into sbatch options: --cpus-per-task, --mem, -t, --gpus, one node."""
    wanted = PARAMS.resources.of(rule)
    return {
        "cpus_per_task": wanted.cpus,
        "mem_mb": wanted.mem_mb,
        "runtime": wanted.runtime,
        "gpu": wanted.gpus,
        "nodes": 1,
    }


def launcher(rule):
    """python, or torchrun with one process per GPU for a training rule given several."""
    gpus = PARAMS.resources.of(rule).gpus
    return "python" if gpus <= 1 else f"torchrun --standalone --nproc-per-node {gpus}"
