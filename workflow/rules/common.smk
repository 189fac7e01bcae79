import json
import os
import shlex

DATASET = config["data"]["name"]
RAW = f"data/raw/{DATASET}"
PACKED = f"data/packed/{DATASET}"
SPLIT = "data/splits/split.parquet"
# Torch stages use every core, as under DVC: Snakemake would otherwise set OMP_NUM_THREADS=1, and
# the thread count changes floating-point results (bitwise reproducibility is per thread count).
TORCH_THREADS = min(workflow.cores, os.cpu_count() or 1)
TRAIN_CODE = [
    "src/s5cl/pipeline.py",
    "src/s5cl/train.py",
    "src/s5cl/methods.py",
    "src/s5cl/losses.py",
    "src/s5cl/augment.py",
    "src/s5cl/models.py",
    "src/s5cl/device.py",
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
