"""Assign every image exactly once to labeled / unlabeled / val / test, per class, from a seed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from s5cl.errors import UserError
from s5cl.params import SplitParams

ROLES = ("labeled", "unlabeled", "val", "test")


def make_split(
    labels: np.ndarray,
    cfg: SplitParams,
    seed: int,
    class_names: list[str] | None = None,
    subsets: np.ndarray | None = None,
) -> pd.DataFrame:
    """Stratified split: within each class, a seeded shuffle is cut into test, val, labeled and
    unlabeled. Returns one row per image: `index` (row of the packed dataset), `label`, `role`.

    `subsets` (train/val/test per image) is the dataset's own split: its val and test images keep
    those roles (as in the paper: trained on NCT-CRC-HE-100K, tested on CRC-VAL-HE-7K), and the
    matching fraction is not cut from the training images.
    """
    labels = np.asarray(labels)
    subsets = np.full(len(labels), "train") if subsets is None else np.asarray(subsets)
    rng = np.random.default_rng(seed)
    roles = np.where(np.isin(subsets, ("val", "test")), subsets, None).astype(object)
    own_test, own_val = (subsets == "test").any(), (subsets == "val").any()
    for label in np.unique(labels):  # sorted, so the RNG stream is the same on every run
        members = rng.permutation(np.flatnonzero((labels == label) & (subsets == "train")))
        n = len(members)
        n_test = 0 if own_test else round(cfg.test_fraction * n)
        n_val = 0 if own_val else round(cfg.val_fraction * n)
        pool = n - n_test - n_val
        if cfg.labels_per_class is not None:
            n_labeled = cfg.labels_per_class
        else:
            n_labeled = max(1, round((cfg.label_fraction or 0) * pool))
        name = class_names[label] if class_names else str(label)
        if n_labeled > pool:
            raise UserError(
                f"split.labels_per_class={n_labeled}: class {name!r} has only {pool} training "
                f"images ({n} in all); lower it or the test/val fractions"
            )
        cuts = np.cumsum([n_test, n_val, n_labeled])
        test, val, labeled, unlabeled = np.split(members, cuts)
        roles[test], roles[val], roles[labeled], roles[unlabeled] = (
            "test",
            "val",
            "labeled",
            "unlabeled",
        )
    return pd.DataFrame({"index": np.arange(len(labels)), "label": labels, "role": roles})


def indices(split: pd.DataFrame, role: str) -> np.ndarray:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    return split.loc[split["role"] == role, "index"].to_numpy()
