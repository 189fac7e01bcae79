"""Far from the training data: whether a new image looks like nothing the model was trained on.

A classifier gives every input one of its classes, often confidently: a digits model calls a
blood cell "8" at 0.998. Distance to the nearest training image in the 64-d embedding does not
catch it either (measured on that model: blood cells and colon tissue sit as close to a training
digit as held-out digits do; the contrastive embedding folds everything onto its clusters).
What does is the Mahalanobis distance of the encoder's features to the training images'
feature distribution (Lee et al., NeurIPS 2018, here without classes): the mean and a
Ledoit-Wolf shrunk covariance (scikit-learn) of the features of the labeled images and up to
REFERENCE_MAX unlabeled ones. The threshold is read off the val set, which training never saw:
the QUANTILE-th quantile of its distances. Every model file carries mean, precision matrix and
threshold; `s5cl predict` flags an image farther out than 99% of the val images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

QUANTILE = 0.99  # an image is "far" when it is farther out than 99% of the val images
REFERENCE_MAX = 10_000  # unlabeled images the distribution is estimated on, at most


def reference_rows(labeled: np.ndarray, unlabeled: np.ndarray, seed: int) -> np.ndarray:
    """The training images the distribution is estimated on: every labeled one and at most
    REFERENCE_MAX of the unlabeled ones, drawn with `seed`."""
    if len(unlabeled) > REFERENCE_MAX:
        keep = np.random.default_rng(seed).choice(len(unlabeled), REFERENCE_MAX, replace=False)
        unlabeled = unlabeled[np.sort(keep)]
    return np.concatenate([labeled, unlabeled])


def mahalanobis(
    features: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor
) -> torch.Tensor:
    """N x F features, F mean, F x F precision -> N distances sqrt((x-m)^T P (x-m))."""
    if (
        features.ndim != 2
        or mean.shape != features.shape[1:]
        or precision.shape
        != (
            features.shape[1],
            features.shape[1],
        )
    ):
        raise ValueError(
            f"need N x F features, an F mean and an F x F precision; got {tuple(features.shape)}, "
            f"{tuple(mean.shape)} and {tuple(precision.shape)}"
        )
    centred = features.double() - mean.double()
    return ((centred @ precision.double()) * centred).sum(1).clamp_min(0).sqrt().float()


def fit_novelty(reference: np.ndarray, val: np.ndarray) -> dict[str, Any]:
    """What a model file carries to flag far images, from the encoder features of the
    reference images (M x F) and of the val images (V x F): the features' mean and precision
    matrix, and the threshold (None without a val set: nothing is flagged)."""
    from sklearn.covariance import LedoitWolf

    if len(reference) < 2:
        raise ValueError(f"need at least 2 reference images, got {len(reference)}")
    estimate = LedoitWolf().fit(np.asarray(reference, dtype=np.float64))
    mean = torch.from_numpy(estimate.location_.astype(np.float32))
    precision = torch.from_numpy(estimate.precision_.astype(np.float32))
    threshold = None
    if len(val):
        distances = mahalanobis(torch.from_numpy(np.asarray(val, np.float32)), mean, precision)
        threshold = float(np.quantile(distances.numpy(), QUANTILE))
    return {
        "mean": mean,
        "precision": precision,
        "threshold": threshold,
        "quantile": QUANTILE,
        "val_images": len(val),
        "reference_images": len(reference),
    }
