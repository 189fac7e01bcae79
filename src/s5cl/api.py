"""S5CL as a library, without the pipeline: arrays in memory in, a trained model and scores out.

    from s5cl import api

    params = api.params_from({"warmup": {"steps": 100}})
    data = api.in_memory(images, labels)           # uint8 N x H x W x 3 (or N x H x W)
    split = api.split_roles(len(labels), labeled=..., unlabeled=..., val=..., test=...)
    model = api.new_model(params, data)
    api.train_phase("warmup", model, params, data, split)
    api.train_phase("s5cl", model, params, data, split)
    pseudo = api.pseudo_labels(model, params, data, split)
    api.train_phase("retrain", model, params, data, split, pseudo=pseudo)
    scores = api.scores(model, data, api.split_rows(split, "test"))

The phases, methods and losses are the pipeline's own (s5cl.config.phases, s5cl.training): a run
here with the same params, images and roles is the run the stages make, without files, caches,
resume checkpoints or dvclive logs. docs/api.md walks through it on scikit-learn's digits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from s5cl.config.params import Params, validate
from s5cl.config.phases import PHASE_NAMES, phase
from s5cl.data.packed import PackedDataset
from s5cl.data.packing import ChannelHistogram
from s5cl.data.splitting import ROLES, indices
from s5cl.errors import UserError
from s5cl.evaluation.metrics import classification_metrics, retrieval_metrics
from s5cl.labelling.pseudo_labels import select_pseudo_labels
from s5cl.model.network import S5CLNet, build_model, embed_and_predict
from s5cl.training.device import pick_device
from s5cl.training.loop import NoLog, train
from s5cl.training.methods import make_objective, targets_of_phase

__all__ = [
    "PHASE_NAMES",
    "Params",
    "classify",
    "in_memory",
    "new_model",
    "params_from",
    "pseudo_labels",
    "scores",
    "split_roles",
    "split_rows",
    "train_phase",
]


def params_from(sections: dict[str, Any] | None = None) -> Params:
    """The defaults of params.yaml's models with `sections` over them ({"s5cl": {"tau_u":
    0.5}}), checked as the stages check params.yaml: a mistake is one UserError line."""
    return validate(sections or {})


def in_memory(
    images: np.ndarray, labels: Sequence[int], class_names: Sequence[str] | None = None
) -> PackedDataset:
    """A dataset the training loop reads, from uint8 images in memory: N x H x W x 3, or N x H
    x W grey (repeated to three channels). Square images, as prepare makes them. The
    normalisation is the mean and std of every pixel of every image, per channel, counted as
    prepare counts them."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise UserError(f"images: uint8 expected (0..255), got {images.dtype}")
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=3)
    if images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2]:
        raise UserError(f"images: N x H x W x 3 with H == W expected, got {images.shape}")
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(images):
        raise UserError(f"{len(labels)} labels for {len(images)} images")
    names = [str(c) for c in (class_names or range(int(labels.max()) + 1))]
    if labels.min() < -1 or labels.max() >= len(names):
        raise UserError(f"labels must be -1 (none) or 0..{len(names) - 1}")
    histogram = ChannelHistogram()  # prepare's exact per-channel mean and std
    histogram.add(images)
    return PackedDataset(np.ascontiguousarray(images), labels, names, *histogram.mean_std())


def split_roles(
    count: int,
    labeled: Sequence[int],
    unlabeled: Sequence[int] = (),
    val: Sequence[int] = (),
    test: Sequence[int] = (),
) -> pd.DataFrame:
    """The role of each of `count` images (rows of the dataset), as the split stage writes
    it; an image in no list takes no part."""
    parts = {"labeled": labeled, "unlabeled": unlabeled, "val": val, "test": test}
    rows = [(int(i), role) for role, chosen in parts.items() for i in chosen]
    taken = [i for i, _ in rows]
    if len(set(taken)) != len(taken) or any(not 0 <= i < count for i in taken):
        raise UserError(f"each image in at most one role, rows in 0..{count - 1}")
    table = pd.DataFrame(rows, columns=["index", "role"]).sort_values("index", kind="stable")
    return table.reset_index(drop=True)


def split_rows(split: pd.DataFrame, role: str) -> np.ndarray:
    """The rows of the images in `role` (one of labeled, unlabeled, val, test)."""
    if role not in ROLES:
        raise UserError(f"role: one of {', '.join(ROLES)}, not {role!r}")
    return indices(split, role)


def new_model(params: Params, data: PackedDataset) -> S5CLNet:
    """A new network as params.model says, its initial weights from params.seed."""
    return build_model(params.model, data.num_classes, params.seed, int(data.images.shape[1]))


def train_phase(
    name: str,
    model: S5CLNet,
    params: Params,
    data: PackedDataset,
    split: pd.DataFrame,
    pseudo: np.ndarray | None = None,
) -> dict[str, float]:
    """Train `model` in place for phase `name` (warmup, s5cl or retrain: config.phases) with
    params.method; `pseudo` (from pseudo_labels) for S5CL's retrain. Returns the last step's
    loss and accuracies."""
    if params.model.from_features:
        raise UserError(
            "model.freeze: all trains on the features stage's cache; here use "
            "freeze: all_but_last_<n> or none"
        )
    step = phase(name)
    objective = make_objective(
        step, model, params, data.num_classes, targets_of_phase(step, params, pseudo)
    )
    return train(step, objective, params, data, split, NoLog(), resume=None)["final"]


def classify(
    model: S5CLNet, data: PackedDataset, rows: np.ndarray, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """The embeddings (len(rows) x D) and class probabilities (len(rows) x C) of images
    `rows`."""
    return embed_and_predict(model, data, np.asarray(rows), pick_device(), batch_size)


def pseudo_labels(
    model: S5CLNet, params: Params, data: PackedDataset, split: pd.DataFrame
) -> np.ndarray:
    """Per unlabeled image (in split order), its predicted class where params.pseudolabel
    keeps it, else -1: what the retrain phase pulls it towards."""
    _, probabilities = classify(model, data, split_rows(split, "unlabeled"))
    label, _, kept = select_pseudo_labels(probabilities, params.pseudolabel)
    return np.where(kept, label, -1).astype(np.int64)


def scores(model: S5CLNet, data: PackedDataset, rows: np.ndarray, k: int = 5) -> dict:
    """Accuracy, balanced accuracy, F1s, confusion matrix and kNN retrieval of images `rows`
    (their labels are the truth), as the evaluate stage scores the test set."""
    embeddings, probabilities = classify(model, data, rows)
    truth = data.labels[np.asarray(rows)]
    found = classification_metrics(truth, probabilities.argmax(1), data.class_names)
    return found | retrieval_metrics(embeddings, truth, k)
