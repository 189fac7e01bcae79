"""Assign every image exactly once to labeled / unlabeled / val / test, per class, from a seed."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd

from s5cl.config.params import SplitParams
from s5cl.errors import UserError

# excluded: an image without a label whose group (split.group) is in the val or test set
ROLES = ("labeled", "unlabeled", "val", "test", "excluded")


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


def _degenerate(message: str) -> None:
    """A split that runs but will mislead: one line, and on."""
    warnings.warn(message, stacklevel=3)


def group_roles(
    groups: np.ndarray,
    pool: np.ndarray,
    subsets: np.ndarray,
    cfg: SplitParams,
    rng: np.random.Generator,
    test_rng: np.random.Generator,
    column: str,
) -> dict[str, str]:
    """split.group: each group (patient, slide) whole into test, val or training. Groups are
    shuffled (test_rng: the test groups; rng: the rest) and taken into test, then val, until
    each holds its fraction of the labeled training pool (`pool`, a bool mask), so a group
    is never in two parts. A dataset's own val/test images keep their groups there."""
    parts: dict[str, str] = {}
    for own in ("test", "val"):
        for name in np.unique(groups[subsets == own]):
            if np.any(groups[pool] == name):
                raise UserError(
                    f"leakage: {column} {name!r} has images in the dataset's own {own} set and "
                    "in its training images; move them into one"
                )
            parts[name] = own
    names = test_rng.permutation(np.unique(groups[pool]))
    sizes = {name: int(np.sum(groups[pool] == name)) for name in names}
    total, start = int(pool.sum()), 0
    for role, key in (("test", "test_fraction"), ("val", "val_fraction")):
        if (subsets == role).any():
            continue
        if role == "val" and test_rng is not rng:  # the test groups fixed; the rest by seed
            names = np.concatenate([names[:start], rng.permutation(names[start:])])
        wanted, taken = round(getattr(cfg, key) * total), 0
        while taken < wanted and start < len(names) - 1:  # one group at least stays to train
            parts[names[start]] = role
            taken += sizes[names[start]]
            start += 1
    return parts


def make_split(
    labels: np.ndarray,
    cfg: SplitParams,
    seed: int,
    class_names: list[str] | None = None,
    subsets: np.ndarray | None = None,
    original: np.ndarray | None = None,
    choose: Callable[[np.ndarray, int], np.ndarray] | None = None,
    groups: np.ndarray | None = None,
) -> pd.DataFrame:
    """Stratified split: within each class, a seeded shuffle is cut into test, val, labeled and
    unlabeled. Returns one row per image: `index` (row of the packed dataset), `label`, `role`.

    An image without a label (label -1: the dataset's unlabeled images) is always unlabeled:
    test, val and the labeled set come from labeled images only. With no such image, the split
    is exactly what it was before they existed.

    `choose(pool, budget)`, if given, picks the labeled images instead (split.select): from the
    whole training pool (rows that are neither val, test nor a copy), `budget` of them, where
    budget is classes x labels_per_class, or label_fraction of the pool; it sees no class. The
    test and val cuts are the same with or without it.

    `subsets` (train/val/test/unlabeled per image) is the dataset's own split: its val and test
    images keep those roles (as in the paper: trained on NCT-CRC-HE-100K, tested on
    CRC-VAL-HE-7K), and the matching fraction is not cut from the training images. `original`
    (see `originals`) marks copies of an image: they take its role, so no image is both trained
    on and tested on. `groups` (split.group: a patient or slide per image) keeps each group in
    one part (group_roles); unlabeled images of a test or val group are `excluded`.
    """
    labels = np.asarray(labels)
    has_label = labels >= 0
    real_unlabeled = not has_label.all()
    subsets = np.full(len(labels), "train") if subsets is None else np.asarray(subsets)
    original = np.arange(len(labels)) if original is None else np.asarray(original)
    is_copy = original != np.arange(len(labels))
    rng = np.random.default_rng(seed)
    # split.test_seed: the test images come from a stream of their own, the rest from `seed`.
    test_rng = rng if cfg.test_seed is None else np.random.default_rng(cfg.test_seed)
    roles = np.where(np.isin(subsets, ("val", "test")), subsets, None).astype(object)
    roles[~has_label] = "unlabeled"
    if choose is not None and real_unlabeled:
        raise UserError(
            f"split.select={cfg.select}: chooses among images whose labels the dataset holds (a "
            f"simulation); this one has {int((~has_label).sum())} images without a label: label "
            "what the suggest stage proposes instead (docs/labelling.md)"
        )
    own_test, own_val = (subsets == "test").any(), (subsets == "val").any()
    if groups is not None:
        column = cfg.group or "group"
        pool = has_label & (subsets == "train") & ~is_copy
        parts = group_roles(np.asarray(groups), pool, subsets, cfg, rng, test_rng, column)
        in_part = np.array([parts.get(g) for g in groups], dtype=object)  # "": training
        held = np.isin(in_part, ("test", "val"))
        roles[held & pool] = in_part[held & pool]
        roles[held & ~has_label] = "excluded"
    budget = 0  # labeled images, all classes
    hidden = 0  # labeled images the budget leaves unlabeled, in a dataset with real unlabeled ones
    for label in np.unique(labels[has_label]):  # sorted: the RNG stream is the same on every run
        pool = (labels == label) & (subsets == "train") & ~is_copy
        name = class_names[label] if class_names else str(label)
        if not pool.any():
            raise UserError(
                f"class {name!r} has no training images, only the dataset's own val/test ones; "
                "add some or drop the class"
            )
        if groups is not None:  # test and val were cut by group; shuffle what trains
            members = rng.permutation(np.flatnonzero(pool & (roles == None)))  # noqa: E711
            n, n_test, n_val = int(pool.sum()), 0, 0
        else:
            members = test_rng.permutation(np.flatnonzero(pool))
            n = len(members)
            n_test = 0 if own_test else round(cfg.test_fraction * n)
            if test_rng is not rng:  # the test cut fixed by test_seed; the rest shuffled by seed
                members = np.concatenate([members[:n_test], rng.permutation(members[n_test:])])
            n_val = 0 if own_val else round(cfg.val_fraction * n)
            if not own_test and n_test == 0:
                _degenerate(
                    f"class {name!r} has {n} labeled training images: none for the test set "
                    f"(round({cfg.test_fraction} x {n}) = 0); its scores are not measured"
                )
        pool = len(members) - n_test - n_val
        if cfg.labels_per_class is not None:
            n_labeled = cfg.labels_per_class
        else:
            n_labeled = max(1, round((cfg.label_fraction or 0) * pool))
        if n_labeled > pool:
            key = (
                f"split.labels_per_class={n_labeled}"
                if cfg.labels_per_class is not None
                else f"split.label_fraction={cfg.label_fraction}"
            )
            if not real_unlabeled:  # a simulation asked for more labels than it can hide
                raise UserError(
                    f"{key}: class {name!r} has only {pool} training images left for "
                    f"{n_labeled} labels ({n} before test and val are cut); lower it or the "
                    "test/val fractions"
                )
            _degenerate(
                f"class {name!r} has {pool} labeled training images ({n} before test and val "
                f"are cut), fewer than {key}: all {pool} are used"
            )
            n_labeled = pool
        cuts = np.cumsum([n_test, n_val, n_labeled])
        test, val, labeled, unlabeled = np.split(members, cuts)
        roles[test], roles[val], roles[labeled], roles[unlabeled] = (
            "test",
            "val",
            "labeled",
            "unlabeled",
        )
        budget += n_labeled
        hidden += len(unlabeled)
    if real_unlabeled and hidden:
        _degenerate(
            f"{hidden} of your labeled images are hidden as unlabeled by the label budget (a "
            "simulation); to train on all of them set split.labels_per_class: null and "
            "split.label_fraction: 1"
        )
    if choose is not None:
        pool = np.flatnonzero(np.isin(roles, ("labeled", "unlabeled")))
        if cfg.label_fraction is not None:
            budget = max(1, round(cfg.label_fraction * len(pool)))
        chosen = np.asarray(choose(pool, budget))
        if len(np.unique(chosen)) != budget or not np.isin(chosen, pool).all():
            raise ValueError(f"choose must return {budget} distinct rows of the pool")
        roles[pool] = "unlabeled"
        roles[chosen] = "labeled"
        covered = np.unique(labels[chosen])
        missed = [c for c in np.unique(labels[has_label]) if c not in covered]
        if missed:
            names = [class_names[c] if class_names else str(c) for c in missed]
            _degenerate(
                f"split.select={cfg.select} labeled {len(covered)} of {len(covered) + len(missed)}"
                f" classes (none of {', '.join(names)}); a class without a label is never "
                "predicted"
            )
    roles[is_copy] = roles[original[is_copy]]
    if groups is not None:
        check_groups_apart(roles, np.asarray(groups), cfg.group or "group")
    check_not_empty(roles, cfg, labels[has_label])
    return pd.DataFrame({"index": np.arange(len(labels)), "label": labels, "role": roles})


def check_groups_apart(roles: np.ndarray, groups: np.ndarray, column: str) -> None:
    """No group in two parts (training, val, test): a copy of an image in another group would
    carry it across; an error naming both."""
    part = np.where(np.isin(roles, ("labeled", "unlabeled")), "training", roles)
    used = (part != "excluded") & (groups != "")  # no group: an unlabeled image, training
    frame = pd.DataFrame({"group": groups[used], "part": part[used]}).drop_duplicates()
    twice = frame[frame["group"].duplicated(keep=False)]
    if len(twice):
        name = twice["group"].iloc[0]
        where = " and ".join(sorted(twice.loc[twice["group"] == name, "part"]))
        raise UserError(
            f"leakage: {column} {name!r} has images in {where} (a copy of one image under two "
            f"{column}s?); remove the copy"
        )


def check_not_empty(roles: np.ndarray, cfg: SplitParams, labels: np.ndarray) -> None:
    """An empty test set, or an empty val set that was not asked for (val_fraction: 0), would
    leave the scores or the monitoring without a single image: an error, not a quiet nan.
    `labels`: those of the labeled images."""
    largest = int(np.bincount(labels).max())
    for role, key in (("test", "test_fraction"), ("val", "val_fraction")):
        fraction = getattr(cfg, key)
        if fraction > 0 and not (roles == role).any():
            raise UserError(
                f"split.{key}={fraction}: the {role} set is empty (the largest class has "
                f"{largest} labeled training images, and round({fraction} x {largest}) = "
                f"{round(fraction * largest)}); add labeled images or raise split.{key}"
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
    and how many of the given labels differ from the dataset's own (where it has one).
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
    held = ("val", "test", "excluded")
    held_out = [p for p, r in zip(paths, rows, strict=True) if roles[r] in held]
    if held_out:
        raise UserError(
            f"{source}: {', '.join(held_out[:3])} {'is' if len(held_out) == 1 else 'are'} in the "
            "val or test set (or its group is); labeling it would leak it into training: remove it"
        )
    labels = table["label"].to_numpy().copy()
    given_labels = names.map(class_names.index).to_numpy()
    had = labels[rows] >= 0  # an image without a label gets its first; others may change
    changed = int((labels[rows][had] != given_labels[had]).sum())
    original = originals(index)
    chosen = np.isin(original, original[rows])  # the images and all their copies
    labels[rows], roles[chosen] = given_labels, "labeled"
    copies = chosen & (original != np.arange(len(original)))
    labels[copies] = labels[original[copies]]
    return table.assign(label=labels, role=roles), changed
