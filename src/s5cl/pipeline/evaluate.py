"""Stage `evaluate`: test-set scores and retrieval of the three models (s5cl.metrics)."""

from __future__ import annotations

import pandas as pd

from s5cl import layout
from s5cl.datasets.split import indices
from s5cl.device import pick_device
from s5cl.io import atomic_path, write_json
from s5cl.metrics import (
    classification_metrics,
    plot_confusion,
    plot_per_class_f1,
    retrieval_metrics,
)
from s5cl.models import embed_and_predict
from s5cl.params import Params
from s5cl.pipeline.common import for_inference, open_split

# The models evaluate scores, by the name they have in its outputs, and the stage that wrote each.
EVALUATED = {"warmup": "warmup", "s5cl": "s5cl", "final": "retrain"}


def evaluate(params: Params) -> str:
    data, table = open_split(params)
    test = indices(table, "test")
    device = pick_device()
    results, predictions = {}, []
    for name, stage in EVALUATED.items():
        model = for_inference(stage, params, device)
        embeddings, probs = embed_and_predict(
            model, data, test, device, params.evaluate.batch_size, progress=f"evaluate {name}"
        )
        predicted = probs.argmax(1)
        results[name] = classification_metrics(data.labels[test], predicted, data.class_names)
        results[name] |= retrieval_metrics(embeddings, data.labels[test], params.evaluate.knn_k)
        plot_confusion(
            results[name]["confusion_matrix"],
            data.class_names,
            f"{name}: accuracy {results[name]['accuracy']:.3f}",
            layout.PLOTS / f"confusion_{name}.png",
        )
        predictions.append(
            pd.DataFrame(
                {
                    "model": name,
                    "actual": [data.class_names[i] for i in data.labels[test]],
                    "predicted": [data.class_names[i] for i in predicted],
                }
            )
        )
    plot_per_class_f1(results, data.class_names, layout.PLOTS / "per_class_f1.png")
    write_json(layout.METRICS / "evaluate.json", results)
    final = pd.concat(predictions)
    with atomic_path(layout.METRICS / "predictions.csv") as tmp:
        final[final["model"] == "final"].drop(columns="model").to_csv(tmp, index=False)
    return "; ".join(
        f"{name} acc {r['accuracy']:.3f} macro-F1 {r['macro_f1']:.3f}"
        for name, r in results.items()
    )
