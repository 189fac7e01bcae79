"""A simulated labeller for the sweep's rounds: it answers suggested images with the labels the
dataset already has, through the same store the labelling page writes (labels.csv)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from s5cl.errors import UserError
from s5cl.labelling.page import LabelStore


def answer_with_known_labels(chosen: pd.Series, truth: pd.Series, labels_csv: Path) -> None:
    """Label every path in `chosen` with `truth[path]` (class names by path) in `labels_csv`,
    as a person would on the labelling page."""
    unknown = int((truth[chosen] == "").sum())
    if unknown:
        raise UserError(
            f"sweep.rounds: answers the suggestions with the dataset's own labels (a simulation), "
            f"but {unknown} of the {len(chosen)} suggested images have none; label them with "
            "s5cl label instead (docs/labelling.md)"
        )
    store = LabelStore(labels_csv)
    for path in chosen:
        store.answer(path, truth[path])
