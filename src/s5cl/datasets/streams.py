"""Endless streams of batch indices: m-per-class labeled batches and shuffled unlabeled batches."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from pytorch_metric_learning.samplers import MPerClassSampler

from s5cl.errors import UserError


def labeled_batches(
    indices: np.ndarray, labels: np.ndarray, batch_size: int, m_per_class: int
) -> Iterator[np.ndarray]:
    """Batches of `batch_size` dataset indices, `m_per_class` from each of batch_size/m classes.

    pytorch-metric-learning's MPerClassSampler draws them (it samples from numpy's global RNG,
    which the training loop seeds); a class with fewer than m images is drawn with replacement.
    """
    n_classes = len(np.unique(labels))
    if m_per_class * n_classes < batch_size:
        raise UserError(
            f"batch_labeled={batch_size} needs m_per_class * classes >= batch, but "
            f"{m_per_class} x {n_classes} classes = {m_per_class * n_classes}; lower batch_labeled"
        )
    sampler = MPerClassSampler(
        labels, m_per_class, batch_size, length_before_new_iter=batch_size * 64
    )
    while True:
        order = np.fromiter(iter(sampler), dtype=np.int64)
        for batch in order.reshape(-1, batch_size):
            yield indices[batch]


def unlabeled_batches(
    indices: np.ndarray, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Epochs of shuffled unlabeled images; yields (dataset indices, positions in `indices`).

    Positions let pseudo-label targets be looked up per image. Only full batches are drawn; a
    batch larger than the unlabeled set is capped at the set's size.
    """
    if len(indices) < 2:
        raise UserError(f"the unlabeled set has {len(indices)} images; S5CL needs at least 2")
    batch_size = min(batch_size, len(indices))
    while True:
        order = torch.randperm(len(indices), generator=generator).numpy()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            positions = order[start : start + batch_size]
            yield indices[positions], positions
