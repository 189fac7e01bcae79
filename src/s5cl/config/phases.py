"""The three phases of training, declared once: what each reads from params and continues.

The training loop (s5cl.training.loop) runs a `Phase`; the stage table (s5cl.pipeline.stages)
makes one training stage of each; the models a run leaves, the models evaluate scores and the
sweep's runs are all `PHASES` (layout.model_path names their files).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from s5cl import layout

if TYPE_CHECKING:
    from s5cl.config.params import Params, SupervisedParams


@dataclass(frozen=True)
class Phase:
    """What makes one phase of the schedule differ from the others."""

    name: str  # also the name of its pipeline stage
    section: str  # params section of its optimiser, batches, temperatures and weights
    seed: int  # its RNGs start from params.seed * 100 + seed
    continues: str | None  # the phase whose model it starts from (None: a new model)
    unlabeled: Literal["none", "instance", "pseudo"]  # S5CL's unlabeled targets

    def config(self, params: Params) -> SupervisedParams:
        """Its settings: its own section (retrain's: s5cl's keys, overridden where it sets
        them)."""
        return params.phase_config(self.section)

    def steps_of(self, params: Params) -> int:
        return self.config(params).steps


PHASES = (
    Phase("warmup", "warmup", seed=1, continues=None, unlabeled="none"),
    Phase("s5cl", "s5cl", seed=2, continues="warmup", unlabeled="instance"),
    Phase("retrain", "retrain", seed=3, continues="s5cl", unlabeled="pseudo"),
)
PHASE_NAMES = tuple(p.name for p in PHASES)
# The models a run leaves and evaluate scores, by their file's stem: warmup, s5cl, final
EVALUATED = {layout.model_path(p.name).stem: p.name for p in PHASES}


def phase(name: str) -> Phase:
    for found in PHASES:
        if found.name == name:
            return found
    raise KeyError(f"no phase {name!r}; the phases are {', '.join(PHASE_NAMES)}")
