import numpy as np
import pandas as pd

from s5cl.params import PseudolabelParams
from s5cl.pseudo import pseudo_summary, pseudo_targets, select_pseudo_labels


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
    summary = pseudo_summary(table)
    assert summary["coverage"] == 2 / 3
    assert summary["accuracy_kept"] == 0.5
    assert summary["accuracy_all"] == 2 / 3
    assert pseudo_targets(table).tolist() == [0, 1, -1]
