"""Resume checkpoints: a training stage killed mid-run continues from its last one, bit for bit.

Every `checkpoint.every` steps a training stage writes `checkpoints/<stage>.pt` atomically:
model, optimizers (and an MPL teacher), the step, every RNG state, the position of both batch
streams, the metrics logged so far, and a fingerprint of what the run depends on. A new run of
the stage resumes from it only when the fingerprint matches; otherwise it refuses, naming the
first difference, so two runs are never silently mixed. The finished stage deletes it.

The fingerprint is the params the stage depends on and the md5 of its inputs, both as its
entry in the stage table declares them (s5cl.stages; dvc.yaml lists the same), so a changed
split or warm-up model is caught too, and the number of processes (torchrun): each has its own
augmentation RNG, all saved by rank 0.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s5cl import distributed, layout, stages
from s5cl.datasets.fetch import md5_file
from s5cl.datasets.prepare import INDEX, STATS
from s5cl.errors import UserError
from s5cl.io import load_checkpoint, save_checkpoint
from s5cl.params import Params, values_of


def rng_states(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG a training step draws from: Python's, numpy's global one (the m-per-class
    sampler), torch's CPU and CUDA ones, and the augmentations' generator."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state(),
    }


def restore_rng_states(states: dict[str, Any], generator: torch.Generator) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    generator.set_state(states["generator"])


def input_files(stage: stages.Stage, dataset: str) -> list[Path]:
    """The files whose md5 stands for the stage's inputs: each file it reads, and for the
    packed images their index (the md5 of every image) and stats (hashing a packed file of
    15 GB at every start would take minutes)."""
    packed = layout.packed_dir(dataset)
    files = []
    for path in map(Path, stages.resolve_paths(stage.deps, dataset)):
        files += [path / INDEX, path / STATS] if path == packed else [path]
    return files


def fingerprint(stage: stages.Stage, params: Params) -> dict[str, Any]:
    """What must be equal for a checkpoint to continue this run: the params the stage is cached
    on (dotted keys), the md5 of each input file, and the number of processes."""
    return {
        "params": values_of(params, stage.params),
        "inputs": {str(path): md5_file(path) for path in input_files(stage, params.data.name)},
        "processes": distributed.world_size(),
    }


def first_difference(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """'warmup.lr=0.001, now 0.01' for the first param that differs, else the first input file
    that changed, else a different number of processes, else None."""
    for key in sorted(set(saved["params"]) | set(current["params"])):
        old, new = saved["params"].get(key), current["params"].get(key)
        if old != new:
            return f"{key}={old!r}, now {new!r}"
    for path in sorted(set(saved["inputs"]) | set(current["inputs"])):
        if saved["inputs"].get(path) != current["inputs"].get(path):
            return f"input {path} has changed since"
    before, now = saved.get("processes", 1), current.get("processes", 1)
    if before != now:
        return f"it was written by {before} processes, this run has {now}"
    return None


@dataclass
class Resume:
    """Where a stage keeps its resume checkpoint, how often, and what it must match."""

    path: Path
    every: int  # steps between checkpoints; 0 writes none
    fingerprint: dict[str, Any]
    saved_step: int | None = None  # the step of the last checkpoint on disk

    def load(self) -> dict[str, Any] | None:
        """The checkpoint to continue from, None if there is none; refuses an incompatible one."""
        if not self.path.exists():
            return None
        try:
            state = load_checkpoint(self.path)
        except Exception as error:  # a checkpoint is written atomically, so this is rare
            raise UserError(
                f"{self.path}: unreadable resume checkpoint ({error}); delete it to start over"
            ) from None
        difference = first_difference(state["fingerprint"], self.fingerprint)
        if difference is not None:
            raise UserError(
                f"{self.path} (step {state['step']}) is from a different run: {difference}; "
                f"restore that or delete it to start the stage over (rm {self.path})"
            )
        self.saved_step = int(state["step"])
        return state

    def due(self, done: int, total: int) -> bool:
        """After `done` of `total` steps: time for a checkpoint? (Not after the last step:
        the stage then writes its model.)"""
        return self.every > 0 and done % self.every == 0 and done < total

    def save(self, state: dict[str, Any]) -> None:
        save_checkpoint(self.path, {**state, "fingerprint": self.fingerprint})
        self.saved_step = int(state["step"])

    def kept(self) -> str:
        """What a failed run leaves behind, for its error message."""
        if self.every == 0:
            return "no checkpoints (checkpoint.every: 0)"
        if self.saved_step is None:
            return "no checkpoint was written yet"
        done = f"{self.saved_step} step{'' if self.saved_step == 1 else 's'} done"
        return f"the last good checkpoint, {self.path} ({done}), is kept"

    def finish(self) -> None:
        """The stage's model is written: the checkpoint has served its purpose."""
        self.path.unlink(missing_ok=True)
