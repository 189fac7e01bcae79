"""One function per pipeline stage: read inputs, call the library, write outputs atomically.

Each returns the stage's one-line summary. `stages/<stage>.py` wraps it in the shared command
line; dvc.yaml and workflow/rules/*.smk name the same paths as `s5cl.layout`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from dvclive import Live

from s5cl import distributed, layout
from s5cl.datasets.packed import PackedDataset
from s5cl.datasets.prepare import INDEX, STATS
from s5cl.datasets.prepare import prepare as pack_dataset
from s5cl.datasets.registry import download as fetch_dataset
from s5cl.datasets.split import indices, make_split, originals
from s5cl.device import configure, pick_device
from s5cl.errors import UserError
from s5cl.io import (
    atomic_path,
    load_checkpoint,
    read_json,
    save_checkpoint,
    write_json,
    write_parquet,
)
from s5cl.methods import Objective, UnlabeledTargets, make_objective
from s5cl.metrics import (
    classification_metrics,
    plot_confusion,
    plot_per_class_f1,
    retrieval_metrics,
)
from s5cl.models import S5CLNet, build_model, embed_and_predict, model_from_checkpoint
from s5cl.params import Params
from s5cl.pseudo import pseudo_summary, pseudo_targets, select_pseudo_labels
from s5cl.report import embedding_map, pseudo_label_curve, read_curves, render, training_curves
from s5cl.resume import Resume, fingerprint
from s5cl.train import train

EVALUATED = ("warmup", "s5cl", "final")


def download(params: Params) -> str:
    cfg = params.data
    raw = layout.raw_dir(cfg.name)
    manifest = fetch_dataset(cfg, raw, Path(cfg.downloads))
    subsets = manifest["subset"].value_counts()
    parts = ", ".join(f"{subsets[s]} {s}" for s in ("train", "val", "test") if s in subsets)
    return (
        f"{len(manifest)} images ({parts}) in {manifest['class_name'].nunique()} classes "
        f"listed in {raw}"
    )


def prepare(params: Params) -> str:
    out = layout.packed_dir(params.data.name)
    cfg = params.data
    stats = pack_dataset(layout.raw_dir(cfg.name), out, cfg.size, cfg.workers, cfg.on_bad_image)
    n, h, w, _ = stats["shape"]
    skipped = f" ({stats['skipped']} bad files skipped)" if stats["skipped"] else ""
    return f"{n} images packed as {h}x{w} RGB into {out}{skipped}"


def split(params: Params) -> str:
    index = pd.read_parquet(layout.packed_dir(params.data.name) / INDEX)
    data = PackedDataset.open(layout.packed_dir(params.data.name))
    table = make_split(
        index["label"].to_numpy(),
        params.split,
        params.seed,
        data.class_names,
        index["subset"].to_numpy(),
        originals(index),
    )
    write_parquet(layout.SPLIT, table)
    counts = table["role"].value_counts()
    own = [s for s in ("val", "test") if (index["subset"] == s).any()]
    note = f" ({' and '.join(own)} from the dataset's own split)" if own else ""
    return (
        ", ".join(
            f"{role} {counts.get(role, 0)}" for role in ("labeled", "unlabeled", "val", "test")
        )
        + note
    )


def _open(params: Params) -> tuple[PackedDataset, pd.DataFrame]:
    data = PackedDataset.open(layout.packed_dir(params.data.name))
    table = pd.read_parquet(layout.SPLIT) if layout.SPLIT.exists() else None
    if table is None or len(table) != len(data.labels):
        raise UserError(f"{layout.SPLIT}: missing or stale for this dataset; run the split stage")
    return data, table


# What each training stage reads besides the packed images (whose index.parquet lists their md5s).
TRAIN_INPUTS = {
    "warmup": [layout.SPLIT],
    "s5cl": [layout.SPLIT, layout.model_path("warmup")],
    "retrain": [layout.SPLIT, layout.model_path("s5cl"), layout.PSEUDO],
}


def _train_stage(stage: str, params: Params, objective: Objective, steps: int, cfg) -> str:
    data, table = _open(params)
    packed = layout.packed_dir(params.data.name)
    inputs = [packed / INDEX, packed / STATS, *TRAIN_INPUTS[stage]]
    resume = Resume(
        layout.resume_path(stage), params.checkpoint.every, fingerprint(stage, params, inputs)
    )
    main = distributed.is_main()  # under torchrun, rank 0 alone logs and writes
    logger = Live(dir=str(layout.METRICS / stage), dvcyaml=None, save_dvc_exp=False)
    with logger if main else contextlib.nullcontext() as live:
        checkpoint = train(
            stage,
            objective,
            params,
            cfg,
            steps,
            data,
            labeled=indices(table, "labeled"),
            val=indices(table, "val"),
            unlabeled=indices(table, "unlabeled"),
            live=live,
            resume=resume,
        )
    final = checkpoint["final"]
    summary = (
        f"{params.method}: {steps} steps, loss {final['loss']:.3f}, "
        f"val acc {final.get('val_acc', float('nan')):.3f} -> {layout.model_path(stage)}"
    )
    if not main:
        return summary
    # The labeled images' embeddings travel in the model file: `s5cl predict`'s neighbours.
    labeled = indices(table, "labeled")
    embeddings, _ = embed_and_predict(objective.model, data, labeled, pick_device())
    paths = pd.read_parquet(packed / INDEX, columns=["path"])["path"].to_numpy()
    checkpoint["labeled"] = {
        "paths": paths[labeled].tolist(),
        "labels": data.labels[labeled].tolist(),
        "embeddings": torch.from_numpy(embeddings),
    }
    save_checkpoint(layout.model_path(stage), checkpoint)
    resume.finish()
    return summary


def _previous(stage: str, params: Params) -> dict:
    """The checkpoint a phase continues from; it must come from the same method."""
    checkpoint = load_checkpoint(layout.model_path(stage))
    if checkpoint.get("method", "s5cl") != params.method:
        raise UserError(
            f"{layout.model_path(stage)} was trained with method {checkpoint.get('method')!r}, "
            f"not {params.method!r}; rerun the {stage} stage"
        )
    return checkpoint


def _for_inference(path: Path, params: Params, device: torch.device) -> S5CLNet:
    model = model_from_checkpoint(load_checkpoint(path))
    configure(model, params.compute, device)
    return model


def warmup(params: Params) -> str:
    data = PackedDataset.open(layout.packed_dir(params.data.name))
    model = build_model(params.model, data.num_classes, params.seed)
    objective = make_objective("warmup", model, params, data.num_classes)
    return _train_stage("warmup", params, objective, params.warmup.steps, params.warmup)


def s5cl(params: Params) -> str:
    cfg = params.s5cl
    previous = _previous("warmup", params)
    model = model_from_checkpoint(previous)
    mode = "instance" if cfg.switch_step is None else "online"
    targets = UnlabeledTargets(
        mode, cfg.tau_u, cfg.w_u, cfg.tau_p, cfg.w_p, switch_step=cfg.switch_step
    )
    objective = make_objective("s5cl", model, params, len(previous["class_names"]), targets)
    return _train_stage("s5cl", params, objective, cfg.steps, cfg)


def pseudolabel(params: Params) -> str:
    data, table = _open(params)
    device = pick_device()
    model = _for_inference(layout.model_path("s5cl"), params, device)
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
            "true_label": data.labels[unlabeled],  # hidden from training; for scoring only
        }
    )
    write_parquet(layout.PSEUDO, pseudo)
    summary = pseudo_summary(pseudo)
    write_json(layout.METRICS / "pseudolabel.json", summary)
    return (
        f"kept {summary['coverage']:.1%} of {summary['count']}, accuracy of kept "
        f"{summary['accuracy_kept']:.3f} (all {summary['accuracy_all']:.3f})"
    )


def retrain(params: Params) -> str:
    """S5CL with the kept pseudo-labels as targets; the other methods continue their own
    objective for the same number of steps, so every method gets the same budget."""
    cfg = params.s5cl
    previous = _previous("s5cl", params)
    model = model_from_checkpoint(previous)
    _, table = _open(params)
    pseudo = pd.read_parquet(layout.PSEUDO)
    if not np.array_equal(pseudo["index"].to_numpy(), indices(table, "unlabeled")):
        raise UserError(f"{layout.PSEUDO}: does not match the current split; run pseudolabel")
    targets = UnlabeledTargets(
        "pseudo", cfg.tau_u, cfg.w_u, cfg.tau_p, cfg.w_p, pseudo=pseudo_targets(pseudo)
    )
    objective = make_objective(
        "retrain",
        model,
        params,
        len(previous["class_names"]),
        targets,
        teacher_state=previous.get("teacher"),
    )
    return _train_stage("retrain", params, objective, params.retrain.steps, cfg)


def evaluate(params: Params) -> str:
    data, table = _open(params)
    test = indices(table, "test")
    device = pick_device()
    results, predictions = {}, []
    for name in EVALUATED:
        model = _for_inference(layout.MODELS / f"{name}.pt", params, device)
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


def report(params: Params) -> str:
    """report/index.html: scores, figures and params of the run, in one self-contained page."""
    data, table = _open(params)
    device = pick_device()
    model = _for_inference(layout.model_path("retrain"), params, device)
    test, labeled = indices(table, "test"), indices(table, "labeled")
    rows = np.concatenate([test, labeled])
    embeddings, _ = embed_and_predict(
        model, data, rows, device, params.evaluate.batch_size, progress="report"
    )
    is_labeled = np.arange(len(rows)) >= len(test)
    figures = {
        "Training curves, all phases (also in dvclive: dvc plots show)": training_curves(
            read_curves(layout.METRICS)
        ),
        "Embedding map of the final model": embedding_map(
            embeddings, data.labels[rows], is_labeled, data.class_names, params.seed
        ),
        "Pseudo-label accuracy and coverage against the confidence threshold": (
            pseudo_label_curve(pd.read_parquet(layout.PSEUDO), params.pseudolabel.threshold)
        ),
        "Per-class F1": (layout.PLOTS / "per_class_f1.png").read_bytes(),
        **{
            f"Confusion matrix: {name}": (layout.PLOTS / f"confusion_{name}.png").read_bytes()
            for name in EVALUATED
        },
    }
    scores = read_json(layout.METRICS / "evaluate.json")
    page = render(
        f"S5CL pipeline: {params.method} on {params.data.name}",
        params.model_dump(mode="json"),
        {name: scores[name] for name in EVALUATED},
        read_json(layout.METRICS / "pseudolabel.json"),
        figures,
    )
    out = layout.REPORT / "index.html"
    with atomic_path(out) as tmp:
        tmp.write_text(page)
    return f"{out}: {len(figures)} figures, {len(page) // 1024} KB, self-contained"
