import numpy as np
import pandas as pd
import pytest

from s5cl.config.params import PseudolabelParams
from s5cl.labelling.pseudo_labels import (
    pseudo_line,
    pseudo_summary,
    pseudo_targets,
    select_pseudo_labels,
)


def test_threshold_and_per_class_cap():
    probs = np.array([[0.95, 0.05], [0.97, 0.03], [0.6, 0.4], [0.1, 0.9], [0.99, 0.01]])
    label, _, kept = select_pseudo_labels(probs, PseudolabelParams(threshold=0.8))
    assert label.tolist() == [0, 0, 0, 1, 0]
    assert kept.tolist() == [True, True, False, True, True]
    _, _, capped = select_pseudo_labels(probs, PseudolabelParams(threshold=0.8, max_per_class=2))
    assert capped.tolist() == [False, True, False, True, True]  # the two most confident 0s


def test_summary_and_targets():
    table = pd.DataFrame(
        {
            "label": [0, 1, 1],
            "confidence": [0.9, 0.8, 0.3],
            "kept": [True, True, False],
            "true_label": [0, 0, 1],
        }
    )
    summary = pseudo_summary(table, ["a", "b"])
    assert summary["coverage"] == 2 / 3
    assert summary["accuracy_kept"] == 0.5
    assert summary["accuracy_all"] == 2 / 3
    assert summary["kept_per_class"] == {"a": 1, "b": 1} and summary["truth_count"] == 3
    assert pseudo_targets(table).tolist() == [0, 1, -1]


def test_summary_without_truth_scores_only_what_has_a_hidden_label():
    """Real unlabeled images (true_label -1) have no truth: coverage, confidence and the kept
    classes only; accuracy over the hidden labels alone, on as many as it says."""
    table = pd.DataFrame(
        {
            "label": [0, 1, 1, 0],
            "confidence": [0.9, 0.8, 0.3, 0.95],
            "kept": [True, True, False, True],
            "true_label": [-1, -1, -1, 1],
        }
    )
    mixed = pseudo_summary(table, ["a", "b"])
    assert mixed["truth_count"] == 1 and mixed["accuracy_kept"] == 0.0
    assert mixed["kept_per_class"] == {"a": 2, "b": 1}
    none = pseudo_summary(table.assign(true_label=-1), ["a", "b"])
    assert "accuracy_kept" not in none and "accuracy_all" not in none
    assert none["coverage"] == 0.75 and none["mean_confidence_kept"] == pytest.approx(0.8833, 1e-3)
    assert pseudo_line(none).endswith("no truth to score them (the unlabeled images have no label)")
