import numpy as np
import pytest

from s5cl.datasets.split import indices, make_split
from s5cl.errors import UserError
from s5cl.params import SplitParams


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
