"""Far from the training data (s5cl.evaluation.novelty): the distance against scikit-learn's, the
threshold against the val set, and clear errors for wrong shapes."""

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf
from sklearn.datasets import load_digits

from s5cl.evaluation.novelty import QUANTILE, fit_novelty, mahalanobis, reference_rows


def test_distances_are_scikit_learns_and_the_val_set_sets_the_threshold():
    x = load_digits().data.astype(np.float32)
    reference, val, other = x[:1000], x[1000:1400], x[1400:]
    fitted = fit_novelty(reference, val)
    oracle = LedoitWolf().fit(reference.astype(np.float64))
    distances = mahalanobis(torch.from_numpy(other), fitted["mean"], fitted["precision"])
    np.testing.assert_allclose(distances.numpy() ** 2, oracle.mahalanobis(other), rtol=1e-3)
    on_val = mahalanobis(torch.from_numpy(val), fitted["mean"], fitted["precision"]).numpy()
    assert (on_val > fitted["threshold"]).mean() == pytest.approx(1 - QUANTILE, abs=0.005)
    assert fit_novelty(reference, val[:0])["threshold"] is None  # no val set: nothing flagged


def test_reference_rows_keep_every_labeled_image_and_a_seeded_sample_of_the_rest():
    labeled, unlabeled = np.arange(5), np.arange(5, 30_005)
    rows = reference_rows(labeled, unlabeled, seed=0)
    assert list(rows[:5]) == list(labeled) and len(rows) == 5 + 10_000
    assert np.array_equal(rows, reference_rows(labeled, unlabeled, seed=0))
    assert np.all(np.diff(rows[5:]) > 0)


def test_wrong_shapes_are_named():
    with pytest.raises(ValueError, match=r"need N x F features, an F mean and an F x F"):
        mahalanobis(torch.zeros(3, 4), torch.zeros(5), torch.eye(4))
    with pytest.raises(ValueError, match="at least 2 reference images"):
        fit_novelty(np.zeros((1, 4)), np.zeros((0, 4)))
