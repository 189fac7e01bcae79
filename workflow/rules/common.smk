import hashlib
import os

from s5cl.config.params import values_of

DATASET = config["data"]["name"]


def paths(table_paths):
    """The stage table's paths for this config's dataset."""
    return stages.resolve_paths(table_paths, DATASET)


def outputs_of(stage):
    """What a stage writes, folders as Snakemake's directory() outputs."""
    return [
        directory(path) if marked.endswith("/") else path
        for marked, path in zip(stage.outputs(), paths(stage.outputs()))
    ]


def cache_key(keys):
    """The config values a job is cached on (Snakemake reruns a job whose params changed)."""
    return values_of(PARAMS, tuple(keys))


def code_digest(stage):
    """The md5 of the code a stage runs (stages.code_deps): as a rule param, Snakemake reruns
    the job when any of it changes ("Params have changed since last execution")."""
    digest = hashlib.md5()
    for path in stages.code_deps(stage):
        for part in (path.encode(), b"\0", Path(path).read_bytes()):
            digest.update(part)
    return digest.hexdigest()


def threads_of(rule):
    """The rule's `resources` cpus, but no more cores than this machine gives the process
    (Snakemake also caps them at --cores). Snakemake sets OMP_NUM_THREADS to this, and torch
    results depend on the thread count: torch rules default to 8 so that, like `dvc repro`,
    they use every core here and both give the same bits."""
    return min(stages.rule_resources(PARAMS, rule).cpus, len(os.sched_getaffinity(0)))


def resources_of(rule):
    """The rule's `resources` (params.yaml) as Snakemake resources, which the SLURM executor
    turns into sbatch options: --cpus-per-task, --mem, -t, --gpus, one node."""
    wanted = stages.rule_resources(PARAMS, rule)
    return {
        "cpus_per_task": wanted.cpus,
        "mem_mb": wanted.mem_mb,
        "runtime": wanted.runtime,
        "gpu": wanted.gpus,
        "nodes": 1,
    }


def launcher(rule):
    """python, or torchrun with one process per GPU for a training rule given several."""
    gpus = stages.rule_resources(PARAMS, rule).gpus
    return "python" if gpus <= 1 else f"torchrun --standalone --nproc-per-node {gpus}"
