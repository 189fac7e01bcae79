"""Test-set scores (scikit-learn) and the plots a user reads them from."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
)

from s5cl.figures import save_figure


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict:
    labels = list(range(len(class_names)))
    per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        ),
        "weighted_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
        ),
        "per_class_f1": {name: float(f) for name, f in zip(class_names, per_class, strict=True)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray, k: int = 5) -> dict:
    """How well the embedding retrieves images of the same class, leave-one-out on one set.

    embeddings: N x D (cosine similarity); labels: N. For each image, its k nearest other images:
    precision_at_1 (the nearest shares its class), precision_at_k (fraction of the k that do),
    knn_accuracy (their majority vote, ties to the lowest class id, is its class).
    """
    from sklearn.neighbors import NearestNeighbors

    if embeddings.ndim != 2 or len(embeddings) != len(labels):
        raise ValueError(f"embeddings {embeddings.shape} and labels {labels.shape} do not match")
    if len(labels) <= k:
        raise ValueError(f"need more than k={k} images for leave-one-out retrieval")
    search = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(embeddings)
    _, neighbours = search.kneighbors(embeddings)
    neighbours = np.array([row[row != i][:k] for i, row in enumerate(neighbours)])
    hits = labels[neighbours] == labels[:, None]
    votes = np.array([np.bincount(row, minlength=labels.max() + 1) for row in labels[neighbours]])
    return {
        "precision_at_1": float(hits[:, 0].mean()),
        "precision_at_k": float(hits.mean()),
        "knn_accuracy": float((votes.argmax(1) == labels).mean()),
        "k": k,
    }


def plot_confusion(matrix: list[list[int]], class_names: list[str], title: str, stem: Path) -> None:
    size = max(4.0, 0.55 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(np.array(matrix), display_labels=class_names).plot(
        ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45
    )
    ax.set_title(title)
    save_figure(fig, stem)


def plot_per_class_f1(results: dict[str, dict], class_names: list[str], stem: Path) -> None:
    """Grouped bars: per-class F1 of every model side by side (`stem`.png and .svg)."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(class_names) + 2), 4))
    width = 0.8 / max(1, len(results))
    x = np.arange(len(class_names))
    for i, (model, scores) in enumerate(results.items()):
        values = [scores["per_class_f1"][name] for name in class_names]
        ax.bar(x + i * width, values, width, label=f"{model} (macro {scores['macro_f1']:.3f})")
    ax.set_xticks(x + width * (len(results) - 1) / 2, class_names, rotation=45, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1 on the test set")
    ax.legend(loc="lower right", fontsize="small")
    save_figure(fig, stem)
