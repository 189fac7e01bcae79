"""Pseudo-labels for the unlabeled set: the classifier's prediction, kept when confident enough
(and, optionally, only the most confident `max_per_class` of each class)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from s5cl.config.params import PseudolabelParams


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


def pseudo_summary(table: pd.DataFrame, class_names: list[str]) -> dict:
    """What the kept pseudo-labels are, with no truth needed: coverage, confidence, how many of
    each class; their accuracy only over the images whose label the dataset holds but the
    split hid (`true_label` >= 0; a simulation), and how many those are (`truth_count`)."""
    kept = table["kept"]
    known = table["true_label"] >= 0
    correct = table["label"] == table["true_label"]
    kept_labels = table.loc[kept, "label"].to_numpy()
    summary = {
        "count": len(table),
        "coverage": float(kept.mean()) if len(table) else 0.0,
        "kept": int(kept.sum()),
        "mean_confidence": float(table["confidence"].mean()) if len(table) else float("nan"),
        "mean_confidence_kept": float(table.loc[kept, "confidence"].mean())
        if kept.any()
        else float("nan"),
        "kept_per_class": {
            name: int((kept_labels == i).sum()) for i, name in enumerate(class_names)
        },
        "truth_count": int(known.sum()),
    }
    if known.any():  # hidden labels exist: score against them, and say on how many
        summary["accuracy_all"] = float(correct[known].mean())
        summary["accuracy_kept"] = (
            float(correct[known & kept].mean()) if (known & kept).any() else float("nan")
        )
    return summary


def pseudo_line(summary: dict) -> str:
    """`kept 61.3% of 1239 (mean confidence 0.97), 4-180 a class; accuracy of kept 0.981 on
    1239 hidden labels`: what was kept, and its accuracy only where a truth exists."""
    per_class = summary["kept_per_class"].values()
    line = (
        f"kept {summary['coverage']:.1%} of {summary['count']} (mean confidence "
        f"{summary['mean_confidence_kept']:.2f}), {min(per_class)}-{max(per_class)} a class"
    )
    if summary["truth_count"]:
        return line + (
            f"; accuracy of kept {summary['accuracy_kept']:.3f} (all "
            f"{summary['accuracy_all']:.3f}) on the {summary['truth_count']} with a hidden label"
        )
    return line + "; no truth to score them (the unlabeled images have no label)"


def pseudo_targets(table: pd.DataFrame) -> np.ndarray:
    """Per unlabeled position: the pseudo-label if kept, else -1 (an instance target)."""
    return np.where(table["kept"], table["label"], -1).astype(np.int64)
