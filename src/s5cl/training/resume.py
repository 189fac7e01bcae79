"""Resume checkpoints: a training stage killed mid-run continues from its last one, bit for bit.

Every `checkpoint.every` steps a training stage writes `checkpoints/<stage>-<run>.pt`
atomically: model, optimizers (and an MPL teacher), the step, every RNG state, the position of
both batch streams, the metrics logged so far, and the fingerprint of what the run depends on.
`<run>` is the fingerprint's id, so a checkpoint belongs to exactly one run: a new run of the
stage resumes the checkpoint of its own fingerprint and no other, and removes the others
(they are of runs with other params or inputs, which a run never mixes in). The finished stage
deletes its own; a checkpoint whose run's model is in place anyway (DVC restored it from its
cache, so the stage never ran) is removed before the next stage runs
(s5cl.pipeline.leftovers). Nothing a killed run leaves behind ever stops a rerun.

The fingerprint is given by the caller: the pipeline's training stages use the params the
stage is cached on and the md5 of its inputs, as its entry in the stage table declares them
(s5cl.pipeline.training_stages.run_fingerprint; dvc.yaml lists the same), so a changed split or
warm-up model is caught too, and the number of processes (torchrun): each has its own
augmentation RNG, all saved by rank 0.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s5cl import layout
from s5cl.io import first_line, note
from s5cl.model.torch_files import refused_global, save_checkpoint


def rng_states(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG a training step draws from: Python's, numpy's global one (the m-per-class
    sampler), torch's CPU and CUDA ones, and the augmentations' generator."""
    numpy = np.random.get_state(legacy=False)  # as tensors and plain values (weights_only)
    numpy["state"]["key"] = torch.from_numpy(numpy["state"]["key"].astype(np.int64))
    return {
        "python": random.getstate(),
        "numpy": numpy,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state(),
    }


def restore_rng_states(states: dict[str, Any], generator: torch.Generator) -> None:
    random.setstate(states["python"])
    numpy = {**states["numpy"], "state": dict(states["numpy"]["state"])}
    numpy["state"]["key"] = numpy["state"]["key"].numpy().astype(np.uint32)
    np.random.set_state(numpy)
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    generator.set_state(states["generator"])


def run_id(fingerprint: dict[str, Any]) -> str:
    """12 hex digits that name one run of a stage: its checkpoint's file name."""
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class Resume:
    """Where one run of a stage keeps its resume checkpoint, how often, and what it must match."""

    stage: str
    every: int  # steps between checkpoints; 0 writes none
    fingerprint: dict[str, Any]
    saved_step: int | None = None  # the step of the last checkpoint on disk

    @property
    def run(self) -> str:
        return run_id(self.fingerprint)

    @property
    def path(self) -> Path:
        return layout.resume_path(self.stage, self.run)

    def load(self) -> dict[str, Any] | None:
        """The checkpoint of this run to continue from, None if there is none. Checkpoints of
        other runs of the stage are removed: none can be continued by this one."""
        for other in layout.resume_paths(self.stage):
            if other != self.path:
                other.unlink(missing_ok=True)
                note(f"removed {other}, the checkpoint of a run with other params or inputs")
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            same = state["fingerprint"] == self.fingerprint
        except Exception as error:  # written atomically, so unreadable is rare; crafted is not
            self.path.unlink(missing_ok=True)
            refused = refused_global(error)
            why = (
                f"it holds {refused}, which a checkpoint never does; it was not run "
                "(docs/security.md)"
                if refused
                else f"unreadable ({first_line(error)})"
            )
            note(f"removed {self.path}: {why}; the stage starts over")
            return None
        if not same:  # the name is a hash of the fingerprint: only a collision gets here
            self.path.unlink(missing_ok=True)
            return None
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
