"""Assign every image exactly once to labeled / unlabeled / val / test, per class, from a seed."""

from __future__ import annotations

from collections.abc import Callable

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
    choose: Callable[[np.ndarray, int], np.ndarray] | None = None,
) -> pd.DataFrame:
    """Stratified split: within each class, a seeded shuffle is cut into test, val, labeled and
    unlabeled. Returns one row per image: `index` (row of the packed dataset), `label`, `role`.

    `choose(pool, budget)`, if given, picks the labeled images instead (split.select): from the
    whole training pool (rows that are neither val, test nor a copy), `budget` of them, where
    budget is classes x labels_per_class, or label_fraction of the pool; it sees no class. The
    test and val cuts are the same with or without it.

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
    budget = 0  # labeled images, all classes
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
        budget += n_labeled
    if choose is not None:
        pool = np.flatnonzero(np.isin(roles, ("labeled", "unlabeled")))
        if cfg.label_fraction is not None:
            budget = max(1, round(cfg.label_fraction * len(pool)))
        chosen = np.asarray(choose(pool, budget))
        if len(np.unique(chosen)) != budget or not np.isin(chosen, pool).all():
            raise ValueError(f"choose must return {budget} distinct rows of the pool")
        roles[pool] = "unlabeled"
        roles[chosen] = "labeled"
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


LABELS_COLUMNS = ("path", "label")  # a labels CSV's columns (time, and any others, are kept out)


def add_labels(
    table: pd.DataFrame,
    index: pd.DataFrame,
    given: pd.DataFrame,
    class_names: list[str],
    source: str,
) -> tuple[pd.DataFrame, int]:
    """The split `table` with the images of `given` (path, label: a class name; what s5cl label
    writes) labeled as given: each becomes `labeled` with that class, as do its copies.

    `index` is the packed index (its `path` names the images). An image given twice, a path the
    dataset does not have, a class it does not have, or an image of the val or test set (its
    label would leak into training) is an error naming them in one line. Returns the new table
    and how many of the given labels differ from the dataset's own.
    """
    missing = [c for c in LABELS_COLUMNS if c not in given.columns]
    if missing:
        raise UserError(f"{source}: no column {', '.join(missing)} (it needs path,label[,time])")
    paths, names = given["path"].astype(str), given["label"].astype(str)
    twice = sorted(set(paths[paths.duplicated()]))
    if twice:
        raise UserError(f"{source}: labeled twice: {', '.join(twice[:5])}; keep one answer each")
    unknown = sorted(set(names) - set(class_names))
    if unknown:
        raise UserError(
            f"{source}: unknown class {', '.join(map(repr, unknown))}; the classes are "
            f"{', '.join(class_names)}"
        )
    row_of = pd.Series(np.arange(len(index)), index=index["path"].to_numpy())
    absent = sorted(set(paths) - set(row_of.index))
    if absent:
        raise UserError(
            f"{source}: {len(absent)} path(s) not in the dataset, e.g. {absent[0]} (paths as in "
            "the suggest stage's to_label.csv)"
        )
    rows = row_of[paths.to_numpy()].to_numpy()
    roles = table["role"].to_numpy().copy()
    held_out = [p for p, r in zip(paths, rows, strict=True) if roles[r] in ("val", "test")]
    if held_out:
        raise UserError(
            f"{source}: {', '.join(held_out[:3])} {'is' if len(held_out) == 1 else 'are'} in the "
            "val or test set; labeling it would leak it into training: remove it"
        )
    labels = table["label"].to_numpy().copy()
    given_labels = names.map(class_names.index).to_numpy()
    changed = int((labels[rows] != given_labels).sum())
    original = originals(index)
    chosen = np.isin(original, original[rows])  # the images and all their copies
    labels[rows], roles[chosen] = given_labels, "labeled"
    copies = chosen & (original != np.arange(len(original)))
    labels[copies] = labels[original[copies]]
    return table.assign(label=labels, role=roles), changed
