"""Stage `evaluate`: test-set scores with their confidence intervals, paired comparisons and
retrieval of the three models (s5cl.evaluation.metrics, s5cl.evaluation.stats), and val-set scores
for tuning."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from s5cl import layout
from s5cl.config.params import Params
from s5cl.config.phases import EVALUATED
from s5cl.data.packing import INDEX
from s5cl.data.splitting import indices
from s5cl.errors import UserError
from s5cl.evaluation.metrics import (
    classification_metrics,
    plot_confusion,
    plot_per_class_f1,
    retrieval_metrics,
)
from s5cl.evaluation.stats import BOOTSTRAPPED, LEVEL, RESAMPLES, score_intervals
from s5cl.io import atomic_path, read_parquet, write_csv, write_json
from s5cl.model.network import embed_and_predict
from s5cl.pipeline.common import for_inference, open_split
from s5cl.training.device import pick_device

# The models evaluate scores: config.phases.EVALUATED (their names in its outputs, and phases).
# The paired comparisons, first − second: what each phase adds, and all of it.
PAIRS = [("final", "warmup"), ("final", "s5cl"), ("s5cl", "warmup")]
# Scored on the val set too: what a choice of settings may read (the test set never).
VAL_SCORES = ("accuracy", "balanced_accuracy", "macro_f1")


def evaluate(params: Params) -> str:
    data, table = open_split(params)
    test, val = indices(table, "test"), indices(table, "val")
    k = params.evaluate.knn_k
    if len(test) <= k:  # each test image's k nearest others
        raise UserError(
            f"evaluate.knn_k={k}: the test set has {len(test)} images, and kNN needs more than "
            f"k; lower evaluate.knn_k (at most {len(test) - 1}) or label more test images"
        )
    device = pick_device()
    rows = np.concatenate([test, val])  # one pass per model over both
    results, predicted = {}, {}
    for name, stage in EVALUATED.items():
        model = for_inference(stage, params, device)
        embeddings, probs = embed_and_predict(
            model, data, rows, device, params.evaluate.batch_size, progress=f"evaluate {name}"
        )
        predicted[name] = probs[: len(test)].argmax(1)
        results[name] = classification_metrics(data.labels[test], predicted[name], data.class_names)
        results[name] |= retrieval_metrics(
            embeddings[: len(test)], data.labels[test], params.evaluate.knn_k
        )
        if len(val):
            on_val = classification_metrics(
                data.labels[val], probs[len(test) :].argmax(1), data.class_names
            )
            results[name]["val"] = {key: on_val[key] for key in VAL_SCORES}
        plot_confusion(
            results[name]["confusion_matrix"],
            data.class_names,
            f"{name}: accuracy {results[name]['accuracy']:.3f}",
            layout.EVALUATE_PLOTS / f"confusion_{name}",
        )
    intervals, comparisons = score_intervals(
        data.labels[test], predicted, len(data.class_names), PAIRS, seed=params.seed
    )
    for name in EVALUATED:
        results[name] |= intervals[name]
    results["comparisons"] = comparisons
    results["bootstrap"] = {
        "test_images": len(test),
        "val_images": len(val),
        "resamples": RESAMPLES,
        "level": LEVEL,
        "seed": params.seed,
        "scores": list(BOOTSTRAPPED),
    }
    plot_per_class_f1(
        {name: results[name] for name in EVALUATED},
        data.class_names,
        layout.EVALUATE_PLOTS / "per_class_f1",
    )
    write_json(layout.METRICS / "evaluate.json", results)
    names = {name: [data.class_names[i] for i in p] for name, p in predicted.items()}
    index = read_parquet(layout.packed_dir(params.data.name) / INDEX, columns=["path"])
    frame = pd.DataFrame(
        {
            "image": test,  # the packed row
            "path": index["path"].to_numpy()[test],  # the source file
            "actual": [data.class_names[i] for i in data.labels[test]],
            **names,
        }
    )
    with atomic_path(layout.METRICS / "predictions.csv") as tmp:
        write_csv(frame, tmp)
    line = summary_line(results)
    half = test_halfwidth(results)
    if half > WIDE:
        warnings.warn(
            f"the test set has {len(test)} labeled images: the final model's accuracy is known "
            f"only to ±{100 * half:.0f} points (95% CI), too wide to tell most settings apart; "
            "label more test images",
            stacklevel=1,
        )
    return line


WIDE = 0.10  # a test interval wider than ±10 points is worth a warning


def test_halfwidth(results: dict) -> float:
    """Half the width of the final model's 95% accuracy interval: what the test set's size
    allows one to tell apart."""
    return (results["final"]["accuracy_high"] - results["final"]["accuracy_low"]) / 2


def summary_line(results: dict) -> str:
    """`final 0.939 [0.914, 0.961]; final − warmup +3.1 pt [+0.8, +5.3], McNemar p = 0.01; ...`:
    each model's test accuracy with its interval, then each paired difference."""
    models = [
        f"{name} {results[name]['accuracy']:.3f} "
        f"[{results[name]['accuracy_low']:.3f}, {results[name]['accuracy_high']:.3f}]"
        for name in EVALUATED
    ]
    pairs = []
    for first, second in PAIRS:
        pair = results["comparisons"][f"{first}_vs_{second}"]
        pairs.append(
            f"{first} − {second} {100 * pair['accuracy_diff']:+.1f} pt "
            f"[{100 * pair['accuracy_diff_low']:+.1f}, {100 * pair['accuracy_diff_high']:+.1f}], "
            f"McNemar p = {pair['mcnemar_p']:.2g}"
        )
    level = round(100 * results["bootstrap"]["level"])
    size = (
        f"{results['bootstrap']['test_images']} test images, final's interval "
        f"±{100 * test_halfwidth(results):.1f} pt"
    )
    return f"test accuracy ({level}% CI; {size}) " + "; ".join(models + pairs)
