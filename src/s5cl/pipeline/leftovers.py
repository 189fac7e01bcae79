"""What a killed stage can leave behind, removed before the next stage runs.

A SIGKILL skips every `finally`: it leaves temporary files beside outputs, and resume
checkpoints of runs whose model DVC then restored from its cache. Every stage's runner calls
`remove_what_kills_left` first; it imports torch only when there are checkpoints to look at, and
none of the training code (the data stages' cache keys stay free of it).
"""

from __future__ import annotations

from pathlib import Path

from s5cl import layout
from s5cl.config.phases import PHASE_NAMES
from s5cl.io import note, remove_leftovers
from s5cl.pipeline import stages


def remove_what_kills_left(name: str, dataset: str) -> None:
    """A SIGKILL skips every `finally`: it can leave a temporary file beside an output and a
    resume checkpoint whose run's model DVC then restored from its cache (so its stage never
    ran to delete either). The stages upstream of `name` are done, so what their writers left
    is stale: delete it, and the checkpoints whose run's model is in place."""
    for before in stages.upstream(name):
        for out in map(Path, stages.resolve_paths(before.outputs(), dataset)):
            remove_leftovers(out)
            remove_leftovers(out.parent)  # atomic_dir's of a folder holding the outputs
    for stage in (*stages.upstream(name), stages.get(name)):  # a killed checkpoint write's
        for leftover in layout.CHECKPOINTS.glob(f".{stage.name}-*.tmp"):
            leftover.unlink(missing_ok=True)
    if any(layout.CHECKPOINTS.glob("*.pt")):  # a glob: torch is loaded only if needed
        remove_finished_checkpoints()


def remove_finished_checkpoints() -> None:
    """Delete each resume checkpoint whose run's model is in place: DVC restored the stage's
    output from its cache, so the stage never ran to delete it. Cheap when there is none
    (a glob); run before every stage."""
    for stage in PHASE_NAMES:
        leftovers = layout.resume_paths(stage)
        model = layout.model_path(stage)
        if not leftovers or not model.exists():
            continue
        try:
            import torch  # only when checkpoints are there

            finished = torch.load(model, map_location="cpu", weights_only=True, mmap=True)
            finished = finished.get("run") if isinstance(finished, dict) else None
        except Exception:  # any unreadable file: the stage that reads it will say what it is
            continue
        for path in leftovers:
            if finished is not None and path == layout.resume_path(stage, finished):
                path.unlink(missing_ok=True)
                note(f"removed {path}: {model} of the same run is in place")
