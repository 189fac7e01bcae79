"""Reliability of the training stages, for real, in subprocesses: a SIGKILL mid-run costs only
the steps since the last checkpoint and changes no bit of the result; a checkpoint from other
params is refused; a NaN loss stops with its step; a failing stage loses nothing earlier."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from s5cl.resume import STAGE_PARAMS

from .conftest import ROOT, TINY, VENV_BIN, run, write_params

RESUMABLE = {
    **TINY,
    "warmup.steps": 16,
    "warmup.eval_every": 5,
    "s5cl.steps": 16,
    "s5cl.eval_every": 5,
    "checkpoint.every": 4,
}


def _stage(project: Path, name: str, *sets: str, check: bool = True):
    flags = [arg for item in sets for arg in ("--set", item)]
    return run(["python", f"stages/{name}.py", *flags], project, check=check)


def _results(project: Path, stage: str) -> dict[str, bytes]:
    """Everything a training stage leaves: weights, optimizer state, metrics and plots files."""
    checkpoint = torch.load(project / f"models/{stage}.pt", weights_only=False)
    out = {
        "model": b"".join(v.numpy().tobytes() for v in checkpoint["model"].values()),
        "optimizer": repr(checkpoint["optimizer"]).encode(),
    }
    for path in sorted((project / "metrics" / stage).rglob("*")):
        if path.is_file():
            out[str(path.relative_to(project))] = path.read_bytes()
    return out


def _kill_after_first_checkpoint(project: Path, stage: str) -> None:
    checkpoint = project / "checkpoints" / f"{stage}.pt"
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(
        ["python", f"stages/{stage}.py"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert proc.poll() is None, "the stage ended before writing a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


@pytest.mark.parametrize("stage", ["warmup", "s5cl"])
def test_a_stage_killed_mid_run_resumes_to_the_same_bits(project, stage):
    write_params(project, RESUMABLE)
    for name in ["download", "prepare", "split"] + (["warmup"] if stage == "s5cl" else []):
        _stage(project, name)
    _stage(project, stage)
    uninterrupted = _results(project, stage)
    assert not (project / "checkpoints" / f"{stage}.pt").exists()  # removed once done

    (project / f"models/{stage}.pt").unlink()
    _kill_after_first_checkpoint(project, stage)
    assert not (project / f"models/{stage}.pt").exists()

    resumed = _stage(project, stage)
    assert f"{stage}: resuming from checkpoints/{stage}.pt at step 4 of 16" in resumed.stdout
    assert _results(project, stage) == uninterrupted
    assert not (project / "checkpoints" / f"{stage}.pt").exists()


def test_nan_stops_with_its_step_and_a_checkpoint_from_other_params_is_refused(project):
    write_params(project, {**RESUMABLE, "checkpoint.every": 1})
    for name in ("download", "prepare", "split"):
        _stage(project, name)

    diverged = _stage(project, "warmup", "warmup.lr=1e20", check=False)
    assert diverged.returncode == 2
    assert diverged.stderr.strip().splitlines()[-1] == (
        "warmup: error: the loss is nan at step 1, so training stopped (lower warmup.lr?); "
        "the last good checkpoint, checkpoints/warmup.pt (1 step done), is kept"
    )
    assert (project / "checkpoints/warmup.pt").exists()
    assert not (project / "models/warmup.pt").exists()

    refused = _stage(project, "warmup", check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        "warmup: error: checkpoints/warmup.pt (step 1) is from a different run: "
        "warmup.lr=1e+20, now 0.001; restore that or delete it to start the stage over "
        "(rm checkpoints/warmup.pt)"
    )
    assert (project / "checkpoints/warmup.pt").exists()  # refused, not removed

    _stage(project, "split", "seed=1")  # same params for warmup, but another split
    refused = _stage(project, "warmup", "warmup.lr=1e20", "seed=0", check=False)
    assert "input data/splits/split.parquet has changed since" in refused.stderr

    (project / "checkpoints/warmup.pt").unlink()
    assert "warmup: s5cl: 16 steps" in _stage(project, "warmup").stdout


def test_a_failing_stage_leaves_earlier_outputs_and_the_dvc_cache_intact(project):
    write_params(project, {**RESUMABLE, "checkpoint.every": 1})
    run(["dvc", "repro", "warmup"], project)
    earlier = ["data/packed/digits/images.u8", "data/splits/split.parquet", "models/warmup.pt"]
    before = {path: (project / path).read_bytes() for path in earlier}
    cache = sorted(p for p in (project / ".dvc/cache").rglob("*") if p.is_file())

    write_params(project, {"s5cl.lr": 1e20})
    failed = run(["dvc", "repro"], project, check=False)
    assert failed.returncode != 0
    assert "s5cl: error: the loss is nan at step 1" in failed.stderr
    assert {path: (project / path).read_bytes() for path in earlier} == before
    assert sorted(p for p in (project / ".dvc/cache").rglob("*") if p.is_file()) == cache
    status = run(["dvc", "status", "warmup"], project)
    assert "up to date" in status.stdout
    assert (project / "checkpoints/s5cl.pt").exists()  # the last good s5cl state, for a look


def test_checkpoint_fingerprints_use_the_params_dvc_reruns_a_stage_for():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage, sections in STAGE_PARAMS.items():
        assert tuple(stages[stage]["params"]) == sections
