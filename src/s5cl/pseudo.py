"""Pseudo-labels for the unlabeled set: the classifier's prediction, kept when confident enough
(and, optionally, only the most confident `max_per_class` of each class)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from s5cl.params import PseudolabelParams


def select_pseudo_labels(
    probabilities: np.ndarray, cfg: PseudolabelParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """probabilities: N x C -> (label N, confidence N, kept N bool)."""
    label = probabilities.argmax(1)
    confidence = probabilities.max(1)
    kept = confidence >= cfg.threshold
    if cfg.max_per_class is not None:
        for c in np.unique(label):
            members = np.flatnonzero(kept & (label == c))
            if len(members) > cfg.max_per_class:
                ranked = members[np.argsort(-confidence[members], kind="stable")]
                kept[ranked[cfg.max_per_class :]] = False
    return label, confidence, kept


def pseudo_summary(table: pd.DataFrame) -> dict[str, float]:
    """Coverage and accuracy against the hidden truth, of all predictions and of the kept ones."""
    correct = table["label"] == table["true_label"]
    kept = table["kept"]
    return {
        "count": len(table),
        "coverage": float(kept.mean()),
        "accuracy_all": float(correct.mean()),
        "accuracy_kept": float(correct[kept].mean()) if kept.any() else float("nan"),
        "mean_confidence": float(table["confidence"].mean()),
    }


def pseudo_targets(table: pd.DataFrame) -> np.ndarray:
    """Per unlabeled position: the pseudo-label if kept, else -1 (an instance target)."""
    return np.where(table["kept"], table["label"], -1).astype(np.int64)
