"""Stage `report`: report/index.html, one self-contained page of the run
(s5cl.evaluation.report_page)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from s5cl import layout
from s5cl.config.params import Params
from s5cl.config.phases import EVALUATED
from s5cl.data.splitting import indices
from s5cl.evaluation.report_page import (
    embedding_map,
    pseudo_label_curve,
    read_curves,
    render,
    training_curves,
)
from s5cl.figures import save_figure
from s5cl.io import atomic_path, read_input, read_json, read_parquet
from s5cl.model.network import embed_and_predict
from s5cl.pipeline import stages
from s5cl.pipeline.common import for_inference, open_split
from s5cl.pipeline.evaluate import PAIRS
from s5cl.training.device import pick_device


def read_plot(name: str) -> bytes:
    """A PNG the evaluate stage drew."""
    return read_input(layout.EVALUATE_PLOTS / f"{name}.png", Path.read_bytes, "plot")


def report(params: Params) -> str:
    """Scores, figures and params of the run. The params shown are every section a stage
    reads (stages.REPORTED), which is what the report is cached on."""
    data, table = open_split(params)
    device = pick_device()
    model = for_inference("retrain", params, device)
    test, labeled = indices(table, "test"), indices(table, "labeled")
    rows = np.concatenate([test, labeled])
    embeddings, _ = embed_and_predict(
        model, data, rows, device, params.evaluate.batch_size, progress="report"
    )
    is_labeled = np.arange(len(rows)) >= len(test)
    out = layout.REPORT_PLOTS  # each figure also as PNG and SVG, for a paper
    figures = {
        "Training curves, all phases (also in dvclive: dvc plots show)": save_figure(
            training_curves(read_curves(layout.METRICS)), out / "training_curves"
        ),
        "Embedding map of the final model": save_figure(
            embedding_map(embeddings, data.labels[rows], is_labeled, data.class_names, params.seed),
            out / "embedding_map",
        ),
        "Pseudo-labels: share kept (and accuracy, where a hidden label exists) against the "
        "confidence threshold; kept per class": save_figure(
            pseudo_label_curve(
                read_parquet(layout.PSEUDO), params.pseudolabel.threshold, data.class_names
            ),
            out / "pseudo_labels",
        ),
        "Per-class F1": read_plot("per_class_f1"),
        **{f"Confusion matrix: {name}": read_plot(f"confusion_{name}") for name in EVALUATED},
    }
    scores = read_json(layout.METRICS / "evaluate.json")  # its keys sorted: put them in order
    scores = {name: scores[name] for name in EVALUATED} | {
        "comparisons": {f"{a}_vs_{b}": scores["comparisons"][f"{a}_vs_{b}"] for a, b in PAIRS},
        "bootstrap": scores["bootstrap"],
    }
    shown = {k: v for k, v in params.model_dump(mode="json").items() if k in stages.REPORTED}
    page = render(
        f"S5CL pipeline: {params.method} on {params.data.name}",
        shown,
        scores,
        read_json(layout.METRICS / "pseudolabel.json"),
        figures,
    )
    page_path = layout.REPORT / "index.html"
    with atomic_path(page_path) as tmp:
        tmp.write_text(page)
    return (
        f"{page_path}: {len(figures)} figures, {len(page) // 1024} KB, self-contained; "
        f"figures as PNG and SVG in {layout.PLOTS}/"
    )
