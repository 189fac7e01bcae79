"""The comparison sweep on a real one-node SLURM cluster, through workflow/profiles/slurm:
every job is submitted with sbatch, run by slurmd, and its outputs land."""

from __future__ import annotations

import os
import re
import subprocess
import threading

import pandas as pd
import pytest
import yaml

from .conftest import TINY, VENV_BIN, run
from .slurm_cluster import SlurmCluster, SlurmUnavailable
from .test_sweep import _overlay

# What a cluster without accounting storage (sacct) needs; real clusters have it, so these
# stay out of workflow/profiles/slurm. The first status check after 5 s, not 40, keeps the
# test short.
NO_ACCOUNTING = {
    "slurm-status-command": "squeue",
    "slurm-no-account": True,
    "slurm-init-seconds-before-status-checks": 5,
}
RESOURCES = {  # what the test asks of its 2-core node
    "default": {"cpus": 1, "mem_mb": 1000, "runtime": 10, "gpus": 0},
    "rules": {
        "prepare": {"cpus": 1, "mem_mb": 1500, "runtime": 5},
        "sweep_run": {"cpus": 1, "mem_mb": 3000, "runtime": 20},
    },
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        started = SlurmCluster.start(tmp_path_factory.mktemp("slurm"))
    except SlurmUnavailable as why:
        pytest.skip(f"no SLURM cluster can start here: {why}")
    yield started
    started.stop()


def _watch_queue(cluster: SlurmCluster, seen: list[str], done: threading.Event) -> None:
    """squeue every half second while the workflow runs: what the cluster had queued."""
    while not done.wait(0.5):
        listed = cluster.run(["squeue", "--noheader", "--format=%i %T %C %m %l %j"], check=False)
        seen.extend(line for line in listed.stdout.splitlines() if line not in seen)


@pytest.mark.slow(75)
def test_the_sweep_submits_each_job_with_sbatch_to_a_real_slurm_cluster(project, cluster):
    profile = project / "profiles" / "slurm-without-accounting"
    profile.mkdir(parents=True)
    settings = yaml.safe_load((project / "workflow/profiles/slurm/config.yaml").read_text())
    (profile / "config.yaml").write_text(yaml.safe_dump(settings | NO_ACCOUNTING))
    config = _overlay(TINY) | {
        "sweep": {"methods": ["ce", "s5cl"], "budgets": [2], "seeds": [0]},
        "resources": RESOURCES,
    }
    (project / "tiny.yaml").write_text(yaml.safe_dump(config))

    env = {**cluster.env, "PATH": f"{VENV_BIN}{os.pathsep}{cluster.env['PATH']}"}
    queue: list[str] = []
    done = threading.Event()
    watcher = threading.Thread(target=_watch_queue, args=(cluster, queue, done))
    watcher.start()
    try:
        sweep = subprocess.run(
            ["snakemake", "--profile", str(profile), "sweep", "--configfile", "tiny.yaml"],
            cwd=project, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    finally:
        done.set()
        watcher.join()
    output = sweep.stdout + sweep.stderr
    assert sweep.returncode == 0, output

    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", output)
    jobs = {job_id: cluster.job(job_id) for job_id in submitted}
    rules = sorted(re.search(r"rule_(\w+?)(_wildcards|$)", job["Comment"]).group(1)
                   for job in jobs.values())  # fmt: skip
    assert rules == ["prepare", "sweep_run", "sweep_run"], rules  # download and aggregate: here
    for job in jobs.values():
        rule = re.search(r"rule_(\w+?)(_wildcards|$)", job["Comment"]).group(1)
        asked = RESOURCES["rules"][rule]
        assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", job
        assert job["NumCPUs"] == str(asked["cpus"]), job
        assert job["MinMemoryNode"] == f"{asked['mem_mb']}M", job
        assert job["TimeLimit"] == f"00:{asked['runtime']:02d}:00", job
        assert job["BatchHost"] == cluster.node
    assert {line.split()[0] for line in queue} <= set(jobs)  # only these jobs were ever queued

    table = pd.read_csv(project / "results/summary.csv")
    assert sorted(table["method"]) == ["ce", "s5cl"] and table["accuracy"].between(0, 1).all()
    for method in ("ce", "s5cl"):
        assert (project / f"results/sweep/base/{method}/2/0/models/final.pt").exists()
    print(f"\nsubmitted: {len(jobs)} jobs")
    for job_id, job in sorted(jobs.items()):
        print(
            f"  job {job_id} {job['Comment']}: {job['JobState']} exit {job['ExitCode']} on "
            f"{job['BatchHost']}, cpus {job['NumCPUs']}, mem {job['MinMemoryNode']}, "
            f"time limit {job['TimeLimit']}, ran {job['RunTime']}"
        )
    print("squeue while it ran (%i %T %C %m %l %j):\n  " + "\n  ".join(queue))


def test_rules_take_their_resources_and_launcher_from_the_config(project):
    two_gpus = "resources={rules: {s5cl: {gpus: 2, mem_mb: 12000, runtime: 90}}}"
    plan = run(["snakemake", "-n", "-p", "s5cl", "--config", two_gpus], project).stdout
    s5cl = plan[plan.index("rule s5cl:") :]
    assert "cpus_per_task=8, runtime=90, gpu=2, nodes=1, mem_mb=12000" in s5cl, s5cl
    assert "torchrun --standalone --nproc-per-node 2 stages/s5cl.py" in s5cl
    warmup = plan[plan.index("rule warmup:") : plan.index("rule s5cl:")]
    assert "runtime=60, gpu=0" in warmup and "\npython stages/warmup.py" in warmup.replace(
        "Shell command: ", "\n"
    )
    wrong = run(
        ["snakemake", "-n", "--config", "resources={rules: {evaluate: {gpus: 2}}}"],
        project,
        check=False,
    )
    assert wrong.returncode != 0
    assert "resources.rules.evaluate.gpus=2: only warmup, s5cl, retrain run on several GPUs" in (
        wrong.stdout + wrong.stderr
    )
