"""Which images to label: cold-start and active selection on an embedding, by scikit-activeml.

Cold start (no model yet, no labels; `split.select`) works on a self-supervised embedding of
the training pool (the `coldstart` stage):

    random     uniform, the baseline
    typiclust  TypiClust (Hacohen et al., ICML 2022): k-means into labeled + count clusters,
               from each new cluster its most typical image (densest kNN neighbourhood)
    probcover  ProbCover (Yehuda et al., NeurIPS 2022): balls of radius delta (purity 0.95 of
               a k-means with as many clusters as classes); greedily the image whose ball
               covers most images not covered yet
    kcenter    k-center greedy (CoreSet, Sener & Savarese 2018): the image farthest from all
               chosen (or labeled) so far

A next round (`suggest`) also has the current model's class probabilities:

    margin     the smallest gap between the two most probable classes (uncertainty)
    badge      BADGE (Ash et al., ICLR 2020): k-means++ seeding on the gradient embeddings
               (probabilities - one-hot prediction) x embedding: uncertain and diverse

Every strategy is scikit-activeml's; this module only puts the pipeline's arrays in its form.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from skactiveml.base import SkactivemlClassifier
from skactiveml.pool import (
    Badge,
    CoreSet,
    ProbCover,
    RandomSampling,
    TypiClust,
    UncertaintySampling,
)

from s5cl.config.params import Strategy
from s5cl.errors import UserError

NEEDS_MODEL = ("margin", "badge")  # strategies that read the model's probabilities
PROBCOVER_POOL = 20_000  # ProbCover computes all pairwise distances: at most this many images


class Precomputed(SkactivemlClassifier):
    """A classifier whose answers are already known: each row of X is an image's embedding
    followed by its class probabilities (what the pipeline's model gave). It lets
    scikit-activeml's model-based strategies run on the model's outputs without the model."""

    def __init__(self, n_classes: int, missing_label: float = np.nan) -> None:
        super().__init__(classes=np.arange(n_classes), missing_label=missing_label)
        self.n_classes = n_classes

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: Any = None) -> Precomputed:
        self._validate_data(X, y, sample_weight)  # sets classes_ as scikit-activeml expects
        return self

    def predict_proba(
        self, X: np.ndarray, return_embeddings: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        X = np.asarray(X)
        probabilities, embeddings = X[:, -self.n_classes :], X[:, : -self.n_classes]
        return (probabilities, embeddings) if return_embeddings else probabilities


def normalised(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length: the embedding's geometry is cosine (SupCon)."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


def select(
    strategy: Strategy,
    embeddings: np.ndarray,
    count: int,
    seed: int,
    labels: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
    n_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The `count` images to label next, best first, and each one's score (the strategy's
    utility when it was chosen: higher was chosen sooner; nan where it has none).

    embeddings: N x D, every image of the pool, labeled or not.
    labels: N class ids, -1 where unlabeled (None: nothing labeled yet); only the unlabeled
        are candidates, the labeled count as already chosen (typiclust, kcenter, probcover).
    probabilities: N x C, the model's, for margin and badge.
    n_classes: the number of classes (probcover's k-means; else from probabilities).
    Returns positions into the N rows.
    """
    n = len(embeddings)
    labels = np.full(n, -1) if labels is None else np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels: {n} images need shape ({n},), got {labels.shape}")
    unlabeled = np.flatnonzero(labels < 0)
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if count > len(unlabeled):
        raise UserError(f"{count} images to label asked for, but only {len(unlabeled)} unlabeled")
    X = normalised(embeddings)
    y = np.where(labels < 0, np.nan, labels).astype(float)
    query: dict[str, Any] = {"candidates": unlabeled, "batch_size": count, "return_utilities": True}
    if strategy in NEEDS_MODEL:
        if probabilities is None or probabilities.shape[0] != n:
            raise ValueError(f"{strategy} needs the model's probabilities, N x C with N = {n}")
        classes = probabilities.shape[1]
        clf = Precomputed(classes).fit(np.hstack([X, probabilities]), y)
        if strategy == "margin":
            chooser = UncertaintySampling(method="margin_sampling", random_state=seed)
        else:
            chooser = Badge(clf_embedding_flag_name="return_embeddings", random_state=seed)
        chosen, utilities = chooser.query(
            np.hstack([X, probabilities]), y, clf=clf, fit_clf=False, **query
        )
    elif strategy == "random":
        chosen, utilities = RandomSampling(random_state=seed).query(X, y, **query)
    elif strategy == "typiclust":
        chosen, utilities = TypiClust(random_state=seed).query(X, y, **query)
    elif strategy == "kcenter":
        chosen, utilities = CoreSet(random_state=seed).query(X, y, **query)
    elif strategy == "probcover":
        return _probcover(X, y, count, seed, n_classes or int(np.nanmax(y, initial=0)) + 1)
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    chosen = np.asarray(chosen)
    scores = np.asarray(utilities)[np.arange(count), chosen]
    return chosen, scores


def _probcover(
    X: np.ndarray, y: np.ndarray, count: int, seed: int, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """ProbCover over at most PROBCOVER_POOL images (all labeled ones, then unlabeled ones drawn
    from `seed`): it holds an N x N distance matrix."""
    rows = np.arange(len(X))
    if len(X) > PROBCOVER_POOL:
        labeled, unlabeled = rows[~np.isnan(y)], rows[np.isnan(y)]
        room = max(PROBCOVER_POOL - len(labeled), count)
        drawn = np.random.default_rng(seed).choice(unlabeled, room, replace=False)
        rows = np.sort(np.concatenate([labeled, drawn]))
    chooser = ProbCover(n_classes=n_classes, random_state=seed)
    chosen, utilities = chooser.query(X[rows], y[rows], batch_size=count, return_utilities=True)
    chosen = np.asarray(chosen)
    scores = np.asarray(utilities)[np.arange(count), chosen]
    return rows[chosen], scores
