"""Which images to label: the strategies (s5cl.labelling.selection, on scikit-activeml), the
cold-start
split (split.select), labels added by hand (split.labeled_csv). Real data: digits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

from s5cl.config.params import SplitParams
from s5cl.data.splitting import add_labels, make_split
from s5cl.errors import UserError
from s5cl.labelling import selection
from s5cl.labelling.selection import select

STRATEGIES = ("random", "typiclust", "probcover", "kcenter", "margin", "badge")


@pytest.fixture(scope="module")
def digits():
    """Pixels of 600 digits, their classes, and the probabilities of a real (weak) model: a
    logistic regression fitted on 30 of them."""
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    x, y = x[:600] / 16, y[:600]
    labels = np.full(len(y), -1)
    labels[:30] = y[:30]
    model = LogisticRegression(max_iter=2000).fit(x[:30], y[:30])
    return x, y, labels, model.predict_proba(x)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_picks_count_distinct_unlabeled_images_reproducibly(digits, strategy):
    x, _, labels, probabilities = digits
    chosen, scores = select(strategy, x, 12, 3, labels, probabilities, 10)
    assert len(chosen) == len(set(chosen)) == len(scores) == 12
    assert (labels[chosen] == -1).all()
    again, _ = select(strategy, x, 12, 3, labels, probabilities, 10)
    assert np.array_equal(chosen, again)
    if strategy not in ("margin", "kcenter"):  # with labeled images, these depend on no seed
        other = [select(strategy, x, 12, seed, labels, probabilities, 10)[0] for seed in (4, 5)]
        assert any(not np.array_equal(chosen, o) for o in other), "the seed is not used"


def test_margin_is_the_smallest_gap_between_the_top_two(digits):
    """Oracle: the margins computed here with numpy."""
    x, _, labels, probabilities = digits
    chosen, _ = select("margin", x, 15, 0, labels, probabilities, 10)
    top = np.sort(probabilities, axis=1)
    margin = np.where(labels < 0, top[:, -1] - top[:, -2], np.inf)
    assert set(chosen) == set(np.argsort(margin, kind="stable")[:15])


def test_kcenter_is_greedy_farthest_first(digits):
    """Oracle: k-center greedy written out here on the normalised rows: each pick is the
    unlabeled image farthest from the labeled ones and the picks before it."""
    x, _, labels, probabilities = digits
    chosen, scores = select("kcenter", x, 10, 0, labels, probabilities, 10)
    unit = selection.normalised(x)
    centres = list(np.flatnonzero(labels >= 0))
    for pick, score in zip(chosen, scores, strict=True):
        distance = np.linalg.norm(unit[:, None] - unit[centres][None], axis=2).min(1)
        distance[labels >= 0] = -1
        distance[chosen[: len(centres) - 30]] = -1
        assert pick == distance.argmax() and score == pytest.approx(distance.max())
        centres.append(pick)


def test_badge_starts_from_the_largest_gradient_embedding(digits):
    """Oracle: BADGE's first pick is the image whose gradient embedding (probabilities minus the
    one-hot prediction, outer product with the embedding) is longest."""
    x, _, labels, probabilities = digits
    chosen, _ = select("badge", x, 5, 0, labels, probabilities, 10)
    unit = selection.normalised(x)
    factor = probabilities - np.eye(10)[probabilities.argmax(1)]
    norms = (factor**2).sum(1) * (unit**2).sum(1)  # |a (x) b|^2 = |a|^2 |b|^2
    norms[labels >= 0] = -1
    assert chosen[0] == norms.argmax()


def test_cold_start_on_a_class_structured_embedding_covers_more_classes(digits):
    """Typical picks reach more classes than random ones where the embedding separates them
    (a PCA of the digits' pixels), over 5 seeds."""
    from sklearn.decomposition import PCA

    x, y, _, _ = digits
    features = PCA(20, random_state=0).fit_transform(x)

    def classes(strategy, seed):
        return len(set(y[select(strategy, features, 10, seed, n_classes=10)[0]]))

    covered = {s: np.mean([classes(s, seed) for seed in range(5)]) for s in ("random", "typiclust")}
    assert covered["typiclust"] > covered["random"], covered


def test_probcover_on_a_large_pool_uses_a_drawn_subset(digits, monkeypatch):
    x, _, labels, _ = digits
    monkeypatch.setattr(selection, "PROBCOVER_POOL", 200)
    chosen, _ = select("probcover", x, 8, 0, labels, None, 10)
    assert len(set(chosen)) == 8 and (labels[chosen] == -1).all() and chosen.max() < len(x)


def test_wrong_inputs_are_refused(digits):
    x, _, labels, _ = digits
    with pytest.raises(ValueError, match="needs the model's probabilities"):
        select("margin", x, 3, 0, labels)
    with pytest.raises(UserError, match="only 570 unlabeled"):
        select("random", x, 571, 0, labels)
    with pytest.raises(ValueError, match="labels: 600 images need shape"):
        select("kcenter", x, 3, 0, labels[:5])


# ------------------------------------------------------------------ split.select


def test_a_chooser_replaces_the_labeled_draw_and_leaves_test_and_val_alone(digits_labels):
    cfg = SplitParams(labels_per_class=2)
    drawn = make_split(digits_labels, cfg, 7)
    seen = {}

    def choose(pool, budget):
        seen["pool"], seen["budget"] = pool, budget
        return pool[:budget]  # any class-blind choice

    chosen = make_split(digits_labels, cfg, 7, choose=choose)
    for role in ("test", "val"):
        assert (drawn["role"] == role).equals(chosen["role"] == role)
    assert seen["budget"] == 20  # 10 classes x 2
    assert set(seen["pool"]) == set(drawn.index[drawn["role"].isin(["labeled", "unlabeled"])])
    assert set(chosen.index[chosen["role"] == "labeled"]) == set(seen["pool"][:20])
    fraction = make_split(digits_labels, SplitParams(labels_per_class=None, label_fraction=0.01),
                          7, choose=lambda pool, budget: pool[:budget])  # fmt: skip
    assert (fraction["role"] == "labeled").sum() == round(0.01 * len(seen["pool"]))


# ------------------------------------------------------------------ split.labeled_csv


@pytest.fixture
def index(digits_labels):
    names = [str(c) for c in range(10)]
    return pd.DataFrame(
        {
            "path": [f"digits.npz#images:{i}" for i in range(len(digits_labels))],
            "label": digits_labels,
            "class_name": [names[c] for c in digits_labels],
            "subset": "train",
            "md5": [f"{i:032x}" for i in range(len(digits_labels))],
        }
    )


def test_labels_from_a_csv_join_the_labeled_set(index, digits_labels):
    table = make_split(digits_labels, SplitParams(labels_per_class=1), 0)
    unlabeled = table.index[table["role"] == "unlabeled"][:4]
    wrong = str((digits_labels[unlabeled[3]] + 1) % 10)  # a person may disagree
    given = pd.DataFrame(
        {
            "path": index["path"][unlabeled],
            "label": [*(str(digits_labels[i]) for i in unlabeled[:3]), wrong],
            "time": "t",
        }
    )
    names = [str(c) for c in range(10)]
    new, changed = add_labels(table, index, given, names, "labels.csv")
    assert changed == 1
    assert (new["role"][unlabeled] == "labeled").all()
    assert new["label"][unlabeled[3]] == int(wrong)
    assert (new["role"] == "labeled").sum() == 14


def test_bad_label_files_are_one_line_each(index, digits_labels):
    table = make_split(digits_labels, SplitParams(labels_per_class=1), 0)
    names = [str(c) for c in range(10)]
    test_image = index["path"][table.index[table["role"] == "test"][0]]
    cases = {
        "unknown class 'eleven'": [("digits.npz#images:0", "eleven")],
        "labeled twice": [("digits.npz#images:0", "0"), ("digits.npz#images:0", "1")],
        "not in the dataset": [("nope.png", "0")],
        "would leak it into training": [(test_image, "0")],
    }
    for message, rows in cases.items():
        given = pd.DataFrame(rows, columns=["path", "label"])
        with pytest.raises(UserError, match=message) as error:
            add_labels(table, index, given, names, "labels.csv")
        assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="no column label"):
        add_labels(table, index, pd.DataFrame({"path": ["x"]}), names, "labels.csv")
