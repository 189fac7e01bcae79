"""Endless streams of batch indices: m-per-class labeled batches and shuffled unlabeled batches.

Both are iterators with `state_dict()` / `load_state_dict()`: a resume checkpoint stores the
epoch being drawn and the position in it, so a resumed run draws exactly the batches the
uninterrupted run would have drawn (the RNGs that draw the next epoch are saved beside them).

Both yield global batches: under torchrun every rank gets rank 0's epoch order, and the
training loop keeps its rank's shard of each batch (s5cl.training.distributed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pytorch_metric_learning.samplers import MPerClassSampler

from s5cl.errors import UserError
from s5cl.training import distributed


class LabeledBatches:
    """Batches of `batch_size` dataset indices, `m_per_class` from each of batch_size/m classes.

    pytorch-metric-learning's MPerClassSampler draws each epoch (it samples from numpy's global
    RNG, which the training loop seeds); a class with fewer than m images is drawn with
    replacement.
    """

    def __init__(
        self,
        indices: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        m_per_class: int,
        all_classes: int | None = None,
    ) -> None:
        n_classes = len(np.unique(labels))
        if all_classes is not None and n_classes < all_classes:
            # Labels chosen blind to classes (split.select) or by hand may miss some: then m
            # grows to the smallest divisor of the batch that fills it from the classes there.
            m_per_class = next(
                m for m in range(m_per_class, batch_size + 1)
                if batch_size % m == 0 and m * n_classes >= batch_size
            )  # fmt: skip
        if m_per_class * n_classes < batch_size:
            raise UserError(
                f"batch_labeled={batch_size} needs m_per_class * classes >= batch, but "
                f"{m_per_class} x {n_classes} classes = {m_per_class * n_classes}; "
                "lower batch_labeled"
            )
        self.indices, self.batch_size = indices, batch_size
        self.sampler = MPerClassSampler(
            labels, m_per_class, batch_size, length_before_new_iter=batch_size * 64
        )
        self.order = np.empty(0, dtype=np.int64)  # the epoch being drawn (positions in indices)
        self.position = 0

    def __iter__(self) -> LabeledBatches:
        return self

    def __next__(self) -> np.ndarray:
        if self.position + self.batch_size > len(self.order):
            order = np.fromiter(iter(self.sampler), dtype=np.int64)
            self.order = distributed.same_on_every_rank(order)
            self.position = 0
        batch = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return self.indices[batch]

    def state_dict(self) -> dict[str, Any]:
        # The sampler shuffles its class list in place each epoch: that order is state too.
        # Tensors and plain values only: a checkpoint loads with torch.load(weights_only=True).
        return {
            "order": torch.from_numpy(self.order.copy()),
            "position": self.position,
            "class_order": [int(label) for label in self.sampler.labels],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order, self.position = state["order"].numpy().copy(), int(state["position"])
        self.sampler.labels = list(state["class_order"])


class UnlabeledBatches:
    """Epochs of shuffled unlabeled images; yields (dataset indices, positions in `indices`).

    Positions let pseudo-label targets be looked up per image. Only full batches are drawn; a
    batch larger than the unlabeled set is capped at the set's size.
    """

    def __init__(self, indices: np.ndarray, batch_size: int, generator: torch.Generator) -> None:
        if len(indices) < 2:
            raise UserError(f"the unlabeled set has {len(indices)} images; S5CL needs at least 2")
        self.indices, self.generator = indices, generator
        self.batch_size = min(batch_size, len(indices))
        self.order = np.empty(0, dtype=np.int64)
        self.position = 0

    def __iter__(self) -> UnlabeledBatches:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        if self.position + self.batch_size > len(self.order):
            order = torch.randperm(len(self.indices), generator=self.generator).numpy()
            self.order = distributed.same_on_every_rank(order)
            self.position = 0
        positions = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return self.indices[positions], positions

    def state_dict(self) -> dict[str, Any]:
        return {"order": torch.from_numpy(self.order.copy()), "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order, self.position = state["order"].numpy().copy(), int(state["position"])
