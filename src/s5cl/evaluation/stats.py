"""How sure a score is: bootstrap confidence intervals over test images, paired differences
between models, McNemar's exact test, and the over-seeds statistics of a sweep.

A test set of a few hundred images moves accuracy by a third of a point per image, so a score
without its interval, or a difference without its paired test, is not a finding. Over images:
a seeded percentile bootstrap (every resample draws the same images for every model, so a
difference is paired) and McNemar's exact test on the images where the two models disagree.
Over seeds (a sweep): Student's t interval of the mean, and of the mean paired difference, with
the exact sign-flip permutation test (scipy), which needs 6 seeds before any p can be < 0.05.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

# The scores with an interval; the rest of evaluate.json's scalars are point estimates.
BOOTSTRAPPED = ("accuracy", "balanced_accuracy", "macro_f1")
LEVEL = 0.95
RESAMPLES = 2000


def resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """resamples x n row indices drawn with replacement, the same for every model scored."""
    if n < 1 or resamples < 1:
        raise ValueError(f"need at least one image and one resample, got n={n}, {resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n), dtype=np.int64)


def resampled_scores(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, rows: np.ndarray
) -> dict[str, np.ndarray]:
    """Each of BOOTSTRAPPED on every resample at once, as scikit-learn computes it.

    y_true, y_pred: N class ids; rows: R x N indices (resample_indices). Returns R values per
    score. balanced_accuracy averages recall over the classes present in the resample's truth;
    macro_f1 averages F1 over all n_classes, 0 where a class is never true nor predicted.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be equal 1-d")
    if rows.ndim != 2 or rows.shape[1] != len(y_true):
        raise ValueError(f"rows {rows.shape} must be resamples x {len(y_true)}")
    r = len(rows)
    offset = np.arange(r)[:, None] * n_classes  # one block of n_classes counters per resample

    def counts(classes: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        keys = (offset + classes[rows]).ravel()
        weights = None if where is None else where[rows].ravel().astype(np.float64)
        return np.bincount(keys, weights, minlength=r * n_classes).reshape(r, n_classes)

    correct = y_true == y_pred
    true_count, pred_count = counts(y_true), counts(y_pred)
    hits = counts(y_true, correct)
    present = true_count > 0
    recall = np.divide(hits, true_count, out=np.zeros_like(hits), where=present)
    denominator = true_count + pred_count
    f1 = np.divide(2 * hits, denominator, out=np.zeros_like(hits), where=denominator > 0)
    return {
        "accuracy": correct[rows].mean(axis=1),
        "balanced_accuracy": recall.sum(axis=1) / present.sum(axis=1),
        "macro_f1": f1.mean(axis=1),
    }


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central `level` share of the resampled values (the percentile bootstrap)."""
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def mcnemar_exact(first_right: np.ndarray, second_right: np.ndarray) -> dict:
    """McNemar's exact test: do two models, scored on the same images, differ in accuracy?

    first_right, second_right: N booleans. Only the images where exactly one model is right
    count: b (only the first), c (only the second); under no difference b ~ Binomial(b + c, ½),
    and p is the two-sided exact binomial tail, 1 when the models never disagree.
    """
    first_right, second_right = np.asarray(first_right, bool), np.asarray(second_right, bool)
    if first_right.shape != second_right.shape:
        raise ValueError(f"{first_right.shape} and {second_right.shape} images: not paired")
    b = int((first_right & ~second_right).sum())
    c = int((~first_right & second_right).sum())
    p = 1.0 if b + c == 0 else min(1.0, 2 * float(stats.binom.cdf(min(b, c), b + c, 0.5)))
    return {"only_first_right": b, "only_second_right": c, "mcnemar_p": p}


def score_intervals(
    y_true: np.ndarray,
    predictions: dict[str, np.ndarray],
    n_classes: int,
    pairs: list[tuple[str, str]],
    seed: int = 0,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
) -> tuple[dict[str, dict], dict[str, dict]]:
    """Per model, the `level` interval of each BOOTSTRAPPED score; per pair (first, second),
    the difference first − second of each, its interval over the same resamples, and McNemar.

    Returns ({model: {score_low, score_high}}, {"first_vs_second": {...}}).
    """
    rows = resample_indices(len(y_true), resamples, seed)
    resampled = {m: resampled_scores(y_true, p, n_classes, rows) for m, p in predictions.items()}
    identity = np.arange(len(y_true))[None, :]  # the test set itself: the point estimates
    points = {m: resampled_scores(y_true, p, n_classes, identity) for m, p in predictions.items()}
    intervals = {}
    for model, scores in resampled.items():
        intervals[model] = {}
        for score, values in scores.items():
            low, high = percentile_interval(values, level)
            intervals[model] |= {f"{score}_low": low, f"{score}_high": high}
    comparisons = {}
    for first, second in pairs:
        pair = mcnemar_exact(predictions[first] == y_true, predictions[second] == y_true)
        for score in BOOTSTRAPPED:
            point = float(points[first][score][0] - points[second][score][0])
            low, high = percentile_interval(
                resampled[first][score] - resampled[second][score], level
            )
            pair |= {f"{score}_diff": point, f"{score}_diff_low": low, f"{score}_diff_high": high}
        comparisons[f"{first}_vs_{second}"] = pair
    return intervals, comparisons


# ---- over seeds (a sweep) ----------------------------------------------------------------------


def smallest_sign_flip_p(n: int) -> float:
    """The smallest two-sided p an exact sign-flip test can give with n paired values: 2 / 2^n."""
    return min(1.0, 2.0 / 2**n)


def mean_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Student's t interval of the mean; nan with fewer than two values."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * stats.sem(values)
    mean = float(values.mean())
    return mean - float(half), mean + float(half)


def paired_over_seeds(first: np.ndarray, second: np.ndarray, level: float = LEVEL) -> dict:
    """first − second over seeds that share their splits: the mean difference, its t interval,
    the exact sign-flip permutation p (scipy) and the paired t-test p (which assumes the
    differences are normal). nan p where there are fewer than two seeds."""
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    if first.shape != second.shape:
        raise ValueError(f"{first.shape} and {second.shape} seeds: not paired")
    diffs = first - second
    low, high = mean_interval(diffs, level)
    out = {"n": len(diffs), "diff": float(diffs.mean()), "diff_low": low, "diff_high": high}
    if len(diffs) < 2 or not np.any(diffs):
        out |= {"sign_flip_p": math.nan if len(diffs) < 2 else 1.0,
                "t_p": math.nan if len(diffs) < 2 else 1.0}  # fmt: skip
        return out
    flips = stats.permutation_test(
        (diffs,), np.mean, permutation_type="samples", n_resamples=np.inf, alternative="two-sided"
    )
    out["sign_flip_p"] = float(flips.pvalue)
    constant = np.ptp(diffs) <= 1e-12 * np.abs(diffs).max()  # t is infinite: p = 0
    out["t_p"] = 0.0 if constant else float(stats.ttest_1samp(diffs, 0.0).pvalue)
    return out
