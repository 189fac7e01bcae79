import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s5cl.config.params import SplitParams
from s5cl.data.splitting import ROLES, indices, make_split
from s5cl.errors import UserError


def test_every_image_exactly_once(digits_labels):
    table = make_split(digits_labels, SplitParams(), seed=0)
    assert len(table) == len(digits_labels)
    parts = [set(indices(table, role)) for role in ("labeled", "unlabeled", "val", "test")]
    assert sum(len(p) for p in parts) == len(digits_labels)
    assert set().union(*parts) == set(range(len(digits_labels)))
    for i, a in enumerate(parts):
        for b in parts[i + 1 :]:
            assert not a & b


def test_stratified_per_class(digits_labels):
    cfg = SplitParams(test_fraction=0.2, val_fraction=0.1, labels_per_class=7)
    table = make_split(digits_labels, cfg, seed=3)
    for label in np.unique(digits_labels):
        rows = table[table["label"] == label]
        n = len(rows)
        counts = rows["role"].value_counts()
        assert counts["labeled"] == 7
        assert counts["test"] == round(0.2 * n)
        assert counts["val"] == round(0.1 * n)


def test_label_fraction_budget(digits_labels):
    cfg = SplitParams(labels_per_class=None, label_fraction=0.1)
    table = make_split(digits_labels, cfg, seed=0)
    for label in np.unique(digits_labels):
        rows = table[table["label"] == label]
        pool = (rows["role"].isin(["labeled", "unlabeled"])).sum()
        assert (rows["role"] == "labeled").sum() == round(0.1 * pool)


def test_deterministic_and_seed_dependent(digits_labels):
    a = make_split(digits_labels, SplitParams(), seed=0)
    b = make_split(digits_labels, SplitParams(), seed=0)
    c = make_split(digits_labels, SplitParams(), seed=1)
    assert a.equals(b)
    assert not np.array_equal(indices(a, "labeled"), indices(c, "labeled"))


def test_budget_above_smallest_class_is_refused(digits_labels):
    with pytest.raises(UserError, match="labels_per_class=500: class '0'"):
        make_split(
            digits_labels, SplitParams(labels_per_class=500), seed=0, class_names=list("0123456789")
        )


# ---------------------------------------------------------------- properties, over random data


@st.composite
def split_cases(draw):
    """Random class sizes, label budgets, fractions, dataset-own val/test and duplicate images."""
    sizes = draw(st.lists(st.integers(1, 40), min_size=1, max_size=6))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    labels = labels[draw(st.permutations(range(len(labels))))]
    subsets = np.array(
        draw(
            st.lists(
                st.sampled_from(draw(st.sampled_from([["train"], ["train", "test"],
                                                      ["train", "val", "test"]]))),
                min_size=len(labels),
                max_size=len(labels),
            )
        )
    )  # fmt: skip
    original = np.arange(len(labels))
    for row in (
        draw(st.lists(st.integers(1, len(labels) - 1), max_size=5)) if len(labels) > 1 else []
    ):
        same = np.flatnonzero((labels[:row] == labels[row]) & (subsets[:row] == subsets[row]))
        if len(same):
            original[row] = original[same[0]]  # a copy of an earlier image of its class/subset
    test_fraction = draw(st.floats(0.01, 0.6))
    val_fraction = draw(st.floats(0.0, min(0.3, 0.98 - test_fraction)))
    if draw(st.booleans()):
        budget = {"labels_per_class": draw(st.integers(1, 30)), "label_fraction": None}
    else:
        budget = {"labels_per_class": None, "label_fraction": draw(st.floats(0.001, 1.0))}
    cfg = SplitParams(test_fraction=test_fraction, val_fraction=val_fraction, **budget)
    return labels, subsets, original, cfg, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=300, deadline=None)
@given(split_cases())
def test_split_properties(case):
    labels, subsets, original, cfg, seed = case
    is_copy = original != np.arange(len(labels))
    own_test, own_val = (subsets == "test").any(), (subsets == "val").any()
    expected = {}  # per class: (test, val, labeled, unlabeled) cut from its training pool
    for label in np.unique(labels):
        n = ((labels == label) & (subsets == "train") & ~is_copy).sum()
        n_test = 0 if own_test else round(cfg.test_fraction * n)
        n_val = 0 if own_val else round(cfg.val_fraction * n)
        rest = n - n_test - n_val
        n_labeled = cfg.labels_per_class or max(1, round(cfg.label_fraction * rest))
        expected[label] = (n_test, n_val, n_labeled, rest - n_labeled)
    if any(unlabeled < 0 for *_, unlabeled in expected.values()):
        with pytest.raises(UserError, match="training images"):  # the budget does not fit
            make_split(labels, cfg, seed, None, subsets, original)
        return
    tests = own_test or sum(t for t, *_ in expected.values()) > 0
    vals = own_val or sum(v for _, v, *_ in expected.values()) > 0 or cfg.val_fraction == 0
    if not (tests and vals):
        with pytest.raises(UserError, match="set is empty"):  # unless val_fraction: 0
            make_split(labels, cfg, seed, None, subsets, original)
        return
    table = make_split(labels, cfg, seed, None, subsets, original)
    # every image exactly once, with one of the four roles (so the roles are disjoint)
    assert table["index"].tolist() == list(range(len(labels)))
    assert set(table["role"]) <= set(ROLES)
    roles = table["role"].to_numpy()
    # deterministic
    assert table.equals(make_split(labels, cfg, seed, None, subsets, original))
    # the dataset's own val/test keep their roles; copies share their original's role
    own = np.isin(subsets, ("val", "test"))
    assert (roles[own] == subsets[own]).all()
    assert (roles[is_copy] == roles[original[is_copy]]).all()
    # stratified: each class's training pool is cut by the same fractions and budget
    for label, counts in expected.items():
        pool = (labels == label) & (subsets == "train") & ~is_copy
        got = [(roles[pool] == role).sum() for role in ("test", "val", "labeled", "unlabeled")]
        assert tuple(got) == counts


def test_test_seed_fixes_the_test_images_and_seed_draws_the_rest(digits_labels):
    fixed = SplitParams(test_seed=7)
    one, two = make_split(digits_labels, fixed, seed=0), make_split(digits_labels, fixed, seed=1)
    assert set(indices(one, "test")) == set(indices(two, "test"))
    assert set(indices(one, "labeled")) != set(indices(two, "labeled"))
    assert set(indices(one, "val")) != set(indices(two, "val"))
    other = make_split(digits_labels, SplitParams(test_seed=8), seed=0)
    assert set(indices(one, "test")) != set(indices(other, "test"))
    # unset, the test images are drawn from `seed` with the rest, as before test_seed existed
    plain = make_split(digits_labels, SplitParams(), seed=0)
    assert set(indices(plain, "test")) != set(indices(one, "test"))
    assert (plain["role"] == make_split(digits_labels, SplitParams(), seed=0)["role"]).all()
