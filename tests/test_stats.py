"""s5cl.evaluation.stats against the libraries as oracles: scikit-learn's scores, scipy's bootstrap,
t interval, permutation and binomial tests, statsmodels' McNemar; on real digits predictions."""

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from statsmodels.stats.contingency_tables import mcnemar

from s5cl.evaluation.stats import (
    mcnemar_exact,
    mean_interval,
    paired_over_seeds,
    percentile_interval,
    resample_indices,
    resampled_scores,
    score_intervals,
    smallest_sign_flip_p,
)

SKLEARN = {
    "accuracy": accuracy_score,
    "balanced_accuracy": balanced_accuracy_score,
    "macro_f1": lambda t, p: f1_score(t, p, labels=range(10), average="macro", zero_division=0),
}


@pytest.fixture(scope="module")
def predictions():
    """Two real classifiers of digits, weak ones (few training images) so that they disagree
    on many of the 600 test images."""
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, train_size=60, test_size=600, random_state=0, stratify=y
    )
    knn = KNeighborsClassifier(3).fit(x_train, y_train).predict(x_test)
    logistic = LogisticRegression(max_iter=2000).fit(x_train, y_train).predict(x_test)
    return y_test, knn, logistic


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_every_resample_scores_as_scikit_learn_scores_it(predictions):
    y, knn, _ = predictions
    rows = resample_indices(len(y), 40, seed=3)
    rows[0] = np.flatnonzero(y != 7)[rows[0] % (y != 7).sum()]  # a resample with no 7 at all
    scores = resampled_scores(y, knn, 10, rows)
    for i, row in enumerate(rows):
        for name, score in SKLEARN.items():
            assert scores[name][i] == pytest.approx(score(y[row], knn[row]), abs=1e-12), name


def test_intervals_and_paired_differences_match_scipy_bootstrap(predictions):
    """Two bootstraps of the same data agree to their Monte Carlo error (a few thousandths)."""
    y, knn, logistic = predictions
    intervals, compared = score_intervals(
        y, {"knn": knn, "logistic": logistic}, 10, [("logistic", "knn")], seed=0
    )
    rng = np.random.default_rng(1)
    right = (logistic == y).astype(float)
    oracle = scipy_stats.bootstrap(
        (right,), np.mean, n_resamples=10_000, method="percentile", random_state=rng
    ).confidence_interval
    ours = intervals["logistic"]
    assert (ours["accuracy_low"], ours["accuracy_high"]) == pytest.approx(
        (oracle.low, oracle.high), abs=0.006
    )
    assert ours["accuracy_low"] < right.mean() < ours["accuracy_high"]

    def macro_f1_diff(t, a, b):
        return SKLEARN["macro_f1"](t, a) - SKLEARN["macro_f1"](t, b)

    oracle = scipy_stats.bootstrap(
        (y, logistic, knn), macro_f1_diff, paired=True, vectorized=False, n_resamples=1500,
        method="percentile", random_state=rng,
    ).confidence_interval  # fmt: skip
    pair = compared["logistic_vs_knn"]
    assert pair["macro_f1_diff"] == pytest.approx(macro_f1_diff(y, logistic, knn), abs=1e-12)
    assert (pair["macro_f1_diff_low"], pair["macro_f1_diff_high"]) == pytest.approx(
        (oracle.low, oracle.high), abs=0.012
    )
    # Paired: the interval of the difference is narrower than the two intervals side by side.
    width = pair["accuracy_diff_high"] - pair["accuracy_diff_low"]
    apart = sum(intervals[m]["accuracy_high"] - intervals[m]["accuracy_low"] for m in intervals)
    assert width < apart


def test_the_bootstrap_is_seeded_and_shared_by_the_models(predictions):
    y, knn, logistic = predictions
    one = score_intervals(y, {"a": knn, "b": logistic}, 10, [("a", "b")], seed=5)
    assert one == score_intervals(y, {"a": knn, "b": logistic}, 10, [("a", "b")], seed=5)
    assert one != score_intervals(y, {"a": knn, "b": logistic}, 10, [("a", "b")], seed=6)
    same = score_intervals(y, {"a": knn, "b": knn.copy()}, 10, [("a", "b")])[1]["a_vs_b"]
    assert same["accuracy_diff_low"] == same["accuracy_diff_high"] == 0
    assert same["mcnemar_p"] == 1.0 and same["only_first_right"] == 0


@pytest.mark.parametrize("b, c", [(0, 0), (1, 0), (5, 5), (3, 12), (40, 25), (0, 9)])
def test_mcnemar_equals_statsmodels_and_the_exact_binomial_test(b, c):
    both, neither = 300, 20
    first = np.array([True] * both + [True] * b + [False] * c + [False] * neither)
    second = np.array([True] * both + [False] * b + [True] * c + [False] * neither)
    ours = mcnemar_exact(first, second)
    assert (ours["only_first_right"], ours["only_second_right"]) == (b, c)
    oracle = mcnemar([[both, b], [c, neither]], exact=True).pvalue
    assert ours["mcnemar_p"] == pytest.approx(oracle, rel=1e-12)
    if b + c:
        assert ours["mcnemar_p"] == pytest.approx(scipy_stats.binomtest(b, b + c).pvalue, 1e-12)


def test_mcnemar_refuses_unpaired_images():
    with pytest.raises(ValueError, match="not paired"):
        mcnemar_exact(np.ones(5, bool), np.ones(6, bool))


def test_over_seeds_the_t_interval_and_tests_are_scipys():
    first, second = np.array([0.70, 0.75, 0.72, 0.69]), np.array([0.64, 0.66, 0.65, 0.70])
    paired = paired_over_seeds(first, second)
    oracle = scipy_stats.ttest_rel(first, second)
    interval = oracle.confidence_interval()
    assert (paired["diff_low"], paired["diff_high"]) == pytest.approx(
        (interval.low, interval.high), rel=1e-12
    )
    assert paired["t_p"] == pytest.approx(oracle.pvalue, rel=1e-12)
    # 3 of 4 differences positive, one negative: 2 of 16 sign patterns are as extreme each way
    flips = [
        np.mean(s * (first - second))
        for s in np.array(np.meshgrid(*[[1, -1]] * 4)).T.reshape(-1, 4)
    ]
    extreme = np.mean(np.abs(flips) >= abs(np.mean(first - second)) - 1e-15)
    assert paired["sign_flip_p"] == pytest.approx(extreme)
    low, high = mean_interval(first)
    ci = scipy_stats.t.interval(0.95, 3, loc=first.mean(), scale=scipy_stats.sem(first))
    assert (low, high) == pytest.approx(ci, rel=1e-12)


def test_three_seeds_cannot_give_a_sign_flip_p_below_a_quarter():
    assert smallest_sign_flip_p(3) == 0.25
    assert smallest_sign_flip_p(5) > 0.05 > smallest_sign_flip_p(6)
    always_ahead = paired_over_seeds([0.9, 0.8, 0.85], [0.5, 0.45, 0.4])
    assert always_ahead["sign_flip_p"] == 0.25 and always_ahead["t_p"] < 0.05
    one = paired_over_seeds([0.9], [0.5])
    assert np.isnan(one["diff_low"]) and np.isnan(one["sign_flip_p"])


def test_percentile_interval_is_numpys_quantiles():
    values = np.random.default_rng(0).normal(size=2000)
    assert percentile_interval(values) == pytest.approx(np.quantile(values, [0.025, 0.975]))
