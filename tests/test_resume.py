"""Reliability of the training stages: a stage stopped right after a checkpoint (every method)
resumes to the same bits; a checkpoint of another run is never resumed and never stops a
rerun; a NaN loss stops with its step. (SIGKILLs of `dvc repro` in every training stage:
test_pipeline_e2e.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from s5cl import layout
from s5cl.training.loop import seed_everything
from s5cl.training.methods import METHODS
from s5cl.training.resume import restore_rng_states, rng_states
from s5cl.training.streams import LabeledBatches, UnlabeledBatches

from .conftest import TINY, in_process, stage, stop_after_first_checkpoint, write_params

RESUMABLE = {
    **TINY,
    "warmup.steps": 16,
    "warmup.eval_every": 5,
    "s5cl.steps": 16,
    "s5cl.eval_every": 5,
    "checkpoint.every": 4,
}


def _results(project: Path, stage: str) -> dict[str, bytes]:
    """Everything a training stage leaves: weights, optimizer states, metrics and plots files."""
    checkpoint = torch.load(project / layout.model_path(stage), weights_only=False)
    out = {
        "model": b"".join(v.numpy().tobytes() for v in checkpoint["model"].values()),
        "optimizers": repr([checkpoint[k] for k in checkpoint if "optimizer" in k]).encode(),
    }
    for path in sorted((project / "metrics" / stage).rglob("*")):
        if path.is_file():
            out[str(path.relative_to(project))] = path.read_bytes()
    return out


def _checkpoints(project: Path, stage: str) -> list[Path]:
    return sorted((project / layout.CHECKPOINTS).glob(f"{stage}-*.pt"))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_resumes_to_the_same_bits(project, monkeypatch, method):
    """In-process, so all five methods are cheap: objectives with a teacher (MPL) or their own
    optimizers must carry every piece of state through a checkpoint."""
    write_params(project, {**RESUMABLE, "warmup.steps": 4, "s5cl.steps": 8, "s5cl.eval_every": 3})
    sets = (f"method={method}",)
    in_process(project, monkeypatch, "download", "prepare", "split", "warmup", sets=sets)
    in_process(project, monkeypatch, "s5cl", sets=sets)
    uninterrupted = _results(project, "s5cl")

    stop_after_first_checkpoint(project, monkeypatch, "s5cl", sets)
    (checkpoint,) = _checkpoints(project, "s5cl")
    assert torch.load(checkpoint, weights_only=False)["step"] == 4

    in_process(project, monkeypatch, "s5cl", sets=sets)
    assert _results(project, "s5cl") == uninterrupted


@pytest.mark.slow(10)
def test_nan_stops_with_its_step_and_no_checkpoint_ever_blocks_a_rerun(
    project, monkeypatch, capsys
):
    """In-process, as `python stages/<stage>.py` runs it (conftest.stage): what a user reads."""
    write_params(project, {**RESUMABLE, "checkpoint.every": 1})
    in_process(project, monkeypatch, "download", "prepare", "split")

    diverged = stage("warmup", capsys, "--set", "warmup.lr=1e20")
    assert diverged.code == 2
    (other,) = _checkpoints(project, "warmup")
    assert diverged.last == (
        "warmup: error: the loss is nan at step 1, so training stopped (lower warmup.lr?); "
        f"the last good checkpoint, {other.relative_to(project)} (1 step done), is kept"
    )
    assert not (project / "models/warmup.pt").exists()

    # Another run (other params) neither resumes it nor stops: it removes it and starts over.
    rerun = stage("warmup", capsys)
    assert rerun.code == 0
    assert f"note: removed {other.relative_to(project)}, the checkpoint of a run with other " in (
        rerun.err
    )
    assert "resuming" not in rerun.out
    assert not _checkpoints(project, "warmup")
    model = (project / "models/warmup.pt").read_bytes()

    # DVC restores a stage's output from its cache after a kill, so the stage never runs
    # to remove the killed run's checkpoint: the next stage that runs removes it.
    stop_after_first_checkpoint(project, monkeypatch, "warmup")
    (left,) = _checkpoints(project, "warmup")
    (project / "models/warmup.pt").write_bytes(model)  # what DVC's cache restores
    later = stage("split", capsys)
    assert later.code == 0
    assert f"note: removed {left.relative_to(project)}: models/warmup.pt of the same run" in (
        later.err
    )
    assert not _checkpoints(project, "warmup")


def test_batch_streams_resume_mid_epoch_and_across_epoch_boundaries(digits_labels):
    """Several epochs of each stream, straight through vs. stopped mid-epoch and rebuilt from a
    checkpoint of its state and the RNGs: the same batches, in the same order."""
    indices = np.arange(len(digits_labels)) * 3  # dataset rows, not positions

    def streams(gen):
        return (
            LabeledBatches(indices, digits_labels, batch_size=8, m_per_class=2),
            UnlabeledBatches(indices[:100], 16, gen),
        )

    def draw(labeled, unlabeled, n):
        return [(next(labeled), next(unlabeled)[1]) for _ in range(n)]

    gen = seed_everything(5)
    straight = draw(*streams(gen), 200)  # 64 labeled batches and 6 unlabeled ones an epoch

    gen = seed_everything(5)
    labeled, unlabeled = streams(gen)
    first = draw(labeled, unlabeled, 90)
    state = (labeled.state_dict(), unlabeled.state_dict(), rng_states(gen))
    draw(labeled, unlabeled, 50)  # what the killed run did after its checkpoint, lost

    gen = seed_everything(0)  # a new process seeds as usual, then restores
    labeled, unlabeled = streams(gen)
    labeled.load_state_dict(state[0])
    unlabeled.load_state_dict(state[1])
    restore_rng_states(state[2], gen)
    resumed = first + draw(labeled, unlabeled, 110)
    for (l_a, u_a), (l_b, u_b) in zip(straight, resumed, strict=True):
        assert np.array_equal(l_a, l_b) and np.array_equal(u_a, u_b)
