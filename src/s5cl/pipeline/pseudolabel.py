"""Stage `pseudolabel`: the s5cl model's labels for the unlabeled images
(s5cl.labelling.pseudo_labels)."""

from __future__ import annotations

import warnings

import pandas as pd

from s5cl import layout
from s5cl.config.params import Params
from s5cl.data.splitting import indices
from s5cl.io import write_json, write_parquet
from s5cl.labelling.pseudo_labels import pseudo_line, pseudo_summary, select_pseudo_labels
from s5cl.model.network import embed_and_predict
from s5cl.pipeline.common import for_inference, open_split
from s5cl.training.device import pick_device


def pseudolabel(params: Params) -> str:
    data, table = open_split(params)
    device = pick_device()
    model = for_inference("s5cl", params, device)
    unlabeled = indices(table, "unlabeled")
    _, probs = embed_and_predict(
        model, data, unlabeled, device, params.pseudolabel.batch_size, progress="pseudolabel"
    )
    label, confidence, kept = select_pseudo_labels(probs, params.pseudolabel)
    pseudo = pd.DataFrame(
        {
            "index": unlabeled,
            "label": label,
            "confidence": confidence,
            "kept": kept,
            # hidden from training, for scoring only; -1 for an image without a label
            "true_label": data.labels[unlabeled],
        }
    )
    write_parquet(layout.PSEUDO, pseudo)
    summary = pseudo_summary(pseudo, data.class_names)
    # Only S5CL's retrain trains on these labels; for the other methods they are a diagnostic
    # of the s5cl-phase model (ce and supcon see no unlabeled image, fixmatch and mpl make their
    # own pseudo-labels online).
    summary["used_by_retrain"] = params.method == "s5cl"
    write_json(layout.METRICS / "pseudolabel.json", summary)
    if summary["used_by_retrain"] and summary["count"] and not summary["kept"]:
        warnings.warn(
            f"pseudolabel kept 0% of {summary['count']} unlabeled images (no confidence reached "
            f"pseudolabel.threshold={params.pseudolabel.threshold}, highest "
            f"{pseudo['confidence'].max():.2f}); retrain learns nothing new from them: lower the "
            "threshold or train longer",
            stacklevel=1,
        )
    note = (
        ""
        if summary["used_by_retrain"]
        else f"diagnostic only ({params.method}'s retrain does not use them): "
    )
    return note + pseudo_line(summary)
