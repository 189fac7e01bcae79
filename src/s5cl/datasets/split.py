"""Assign every image exactly once to labeled / unlabeled / val / test, per class, from a seed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from s5cl.errors import UserError
from s5cl.params import SplitParams

ROLES = ("labeled", "unlabeled", "val", "test")


def originals(index: pd.DataFrame) -> np.ndarray:
    """Per row of the packed index, the first row holding the same image (by md5): itself
    unless the image is a copy.

    A copy under another label, or in another of the dataset's own subsets (train/val/test),
    is an error: the first is a labelling mistake, the second leaks test images into training.
    """
    md5 = index["md5"].to_numpy()
    _, first, inverse = np.unique(md5, return_index=True, return_inverse=True)
    original = first[inverse.ravel()]
    for row in np.flatnonzero(original != np.arange(len(md5))):
        one, other = index.iloc[original[row]], index.iloc[row]
        if one["subset"] != other["subset"]:
            raise UserError(
                f"leakage: {other['path']} ({other['subset']}) and {one['path']} "
                f"({one['subset']}) are the same image (md5 {md5[row]}); remove one of them"
            )
        if one["label"] != other["label"]:
            raise UserError(
                f"{other['path']} ({other['class_name']}) and {one['path']} "
                f"({one['class_name']}) are the same image under two labels; remove the wrong one"
            )
    return original


def make_split(
    labels: np.ndarray,
    cfg: SplitParams,
    seed: int,
    class_names: list[str] | None = None,
    subsets: np.ndarray | None = None,
    original: np.ndarray | None = None,
) -> pd.DataFrame:
    """Stratified split: within each class, a seeded shuffle is cut into test, val, labeled and
    unlabeled. Returns one row per image: `index` (row of the packed dataset), `label`, `role`.

    `subsets` (train/val/test per image) is the dataset's own split: its val and test images keep
    those roles (as in the paper: trained on NCT-CRC-HE-100K, tested on CRC-VAL-HE-7K), and the
    matching fraction is not cut from the training images. `original` (see `originals`) marks
    copies of an image: they take its role, so no image is both trained on and tested on.
    """
    labels = np.asarray(labels)
    subsets = np.full(len(labels), "train") if subsets is None else np.asarray(subsets)
    original = np.arange(len(labels)) if original is None else np.asarray(original)
    is_copy = original != np.arange(len(labels))
    rng = np.random.default_rng(seed)
    # split.test_seed: the test images come from a stream of their own, the rest from `seed`.
    test_rng = rng if cfg.test_seed is None else np.random.default_rng(cfg.test_seed)
    roles = np.where(np.isin(subsets, ("val", "test")), subsets, None).astype(object)
    own_test, own_val = (subsets == "test").any(), (subsets == "val").any()
    for label in np.unique(labels):  # sorted, so the RNG stream is the same on every run
        pool = (labels == label) & (subsets == "train") & ~is_copy
        members = test_rng.permutation(np.flatnonzero(pool))
        n = len(members)
        n_test = 0 if own_test else round(cfg.test_fraction * n)
        if test_rng is not rng:  # the test cut fixed by test_seed; the rest shuffled by seed
            members = np.concatenate([members[:n_test], rng.permutation(members[n_test:])])
        n_val = 0 if own_val else round(cfg.val_fraction * n)
        pool = n - n_test - n_val
        if cfg.labels_per_class is not None:
            n_labeled = cfg.labels_per_class
        else:
            n_labeled = max(1, round((cfg.label_fraction or 0) * pool))
        name = class_names[label] if class_names else str(label)
        if n == 0:
            raise UserError(
                f"class {name!r} has no training images, only the dataset's own val/test ones; "
                "add some or drop the class"
            )
        if n_labeled > pool:
            budget = (
                f"split.labels_per_class={n_labeled}"
                if cfg.labels_per_class is not None
                else f"split.label_fraction={cfg.label_fraction}"
            )
            raise UserError(
                f"{budget}: class {name!r} has only {pool} training images left for {n_labeled} "
                f"labels ({n} before test and val are cut); lower it or the test/val fractions"
            )
        cuts = np.cumsum([n_test, n_val, n_labeled])
        test, val, labeled, unlabeled = np.split(members, cuts)
        roles[test], roles[val], roles[labeled], roles[unlabeled] = (
            "test",
            "val",
            "labeled",
            "unlabeled",
        )
    roles[is_copy] = roles[original[is_copy]]
    check_not_empty(roles, cfg, labels)
    return pd.DataFrame({"index": np.arange(len(labels)), "label": labels, "role": roles})


def check_not_empty(roles: np.ndarray, cfg: SplitParams, labels: np.ndarray) -> None:
    """An empty test set, or an empty val set that was not asked for (val_fraction: 0), would
    leave the scores or the monitoring without a single image: an error, not a quiet nan."""
    largest = int(np.bincount(labels).max())
    for role, key in (("test", "test_fraction"), ("val", "val_fraction")):
        fraction = getattr(cfg, key)
        if fraction > 0 and not (roles == role).any():
            raise UserError(
                f"split.{key}={fraction}: the {role} set is empty (the largest class has "
                f"{largest} training images, and round({fraction} x {largest}) = "
                f"{round(fraction * largest)}); add images or raise split.{key}"
            )


def indices(split: pd.DataFrame, role: str) -> np.ndarray:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    return split.loc[split["role"] == role, "index"].to_numpy()
