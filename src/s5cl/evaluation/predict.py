"""`s5cl predict`: classify new images with a trained model file, and show which labeled
training images each one sits closest to in the embedding.

Everything needed travels in the model file: weights, class names, the image size and the
normalisation of the training run, and the embeddings of its labeled images (the neighbours).
New images of any size go through the same decoding as `prepare` (8-bit check, RGB, bilinear
resize), so a prediction sees what training saw.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from s5cl.data.augment import normalize, to_float
from s5cl.data.packing import decode_file
from s5cl.errors import UserError
from s5cl.evaluation.novelty import mahalanobis
from s5cl.io import atomic_path, write_csv
from s5cl.model.network import model_from_checkpoint
from s5cl.model.torch_files import load_checkpoint
from s5cl.training.device import pick_device

MODEL_HINT = "give --model a model file the pipeline wrote (models/final.pt, models/s5cl.pt)"


def image_files(folder: Path) -> list[Path]:
    """Every non-hidden file under `folder`, sorted (a file that is not an image is an error)."""
    if not folder.is_dir():
        raise UserError(f"--folder {folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise UserError(f"--folder {folder}: no files inside")
    return files


@torch.no_grad()
def predict(
    checkpoint: dict,
    paths: list[Path],
    neighbours: int = 3,
    batch_size: int = 64,
    source: str | Path = "the model file",
) -> pd.DataFrame:
    """One row per image: predicted class, confidence, its distance to the training data and
    whether that is far (s5cl.evaluation.novelty), and the `neighbours` nearest labeled training
    images by
    cosine similarity of the embeddings."""
    if "labeled" not in checkpoint:  # model files of versions before predict existed
        raise UserError(
            "the model file has no labeled embeddings (an older version wrote it); "
            "rerun the pipeline to write it again"
        )
    device = pick_device()
    model = model_from_checkpoint(checkpoint, source, MODEL_HINT).eval().to(device)
    check_for_predict(checkpoint, model, source)
    size, names = checkpoint["image_size"], checkpoint["class_names"]
    reference = torch.as_tensor(checkpoint["labeled"]["embeddings"], device=device)
    reference = torch.nn.functional.normalize(reference, dim=1)
    k = min(neighbours, len(reference))
    novelty = checkpoint.get("novelty")  # model files before it existed have none
    rows = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images = []
        for path in chunk:
            decoded = decode_file(str(path), size, missing="check the path")
            if decoded.problem is not None:
                raise UserError(f"{path}: {decoded.problem}")
            images.append(decoded.image)
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(device)
        x = normalize(to_float(batch.contiguous()), checkpoint["mean"], checkpoint["std"])
        features = model.encode(x)
        emb = model.embedder(features)
        probs = model.classifier(emb).softmax(1)
        similarity = torch.nn.functional.normalize(emb, dim=1) @ reference.T
        top_sim, top = similarity.topk(k, dim=1)
        if novelty is not None:
            distance = mahalanobis(features.cpu(), novelty["mean"], novelty["precision"])
        for i, path in enumerate(chunk):
            row = {
                "path": str(path),
                "predicted": names[int(probs[i].argmax())],
                "confidence": round(float(probs[i].max()), 6),
            }
            if novelty is not None:
                row["distance_to_training"] = round(float(distance[i]), 3)
                threshold = novelty["threshold"]
                row["far_from_training"] = threshold is not None and bool(distance[i] > threshold)
            for j in range(k):
                ref = int(top[i, j])
                row[f"neighbour_{j + 1}"] = checkpoint["labeled"]["paths"][ref]
                row[f"neighbour_{j + 1}_class"] = names[int(checkpoint["labeled"]["labels"][ref])]
                row[f"neighbour_{j + 1}_similarity"] = round(float(top_sim[i, j]), 6)
            rows.append(row)
    return pd.DataFrame(rows)


def check_for_predict(checkpoint: dict, model: torch.nn.Module, source: str | Path) -> None:
    """What predict reads beyond the network: the input size, the normalisation and the
    labeled images' embeddings, paths and labels, consistent with each other and the model."""
    labeled, names = checkpoint["labeled"], checkpoint["class_names"]
    problem = None
    if not isinstance(checkpoint["image_size"], int) or not 8 <= checkpoint["image_size"] <= 4096:
        problem = f"image_size {checkpoint['image_size']!r:.40}"
    elif not all(
        isinstance(v, list) and len(v) == 3 for v in (checkpoint["mean"], checkpoint["std"])
    ):
        problem = "mean and std are not 3 numbers each"
    elif not isinstance(labeled, dict) or not {"paths", "labels", "embeddings"} <= set(labeled):
        problem = "no labeled paths, labels and embeddings"
    else:
        embeddings = labeled["embeddings"]
        n = len(labeled["paths"])
        if not isinstance(embeddings, torch.Tensor) or embeddings.shape != (
            n,
            model.embedder.out_features,
        ):
            problem = f"labeled embeddings of shape {getattr(embeddings, 'shape', None)}"
        elif len(labeled["labels"]) != n or not all(
            0 <= int(x) < len(names) for x in labeled["labels"]
        ):
            problem = "labeled labels that do not match its paths or classes"
    novelty = checkpoint.get("novelty")
    if problem is None and novelty is not None:
        dim = model.embedder.in_features
        mean, precision = (novelty.get(k) if isinstance(novelty, dict) else None
                           for k in ("mean", "precision"))  # fmt: skip
        threshold = novelty.get("threshold") if isinstance(novelty, dict) else None
        if not isinstance(mean, torch.Tensor) or mean.shape != (dim,):
            problem = f"a feature mean of shape {getattr(mean, 'shape', None)}"
        elif not isinstance(precision, torch.Tensor) or precision.shape != (dim, dim):
            problem = f"a precision matrix of shape {getattr(precision, 'shape', None)}"
        elif threshold is not None and not isinstance(threshold, float):
            problem = f"a novelty threshold {threshold!r:.40}"
    if problem is not None:
        raise UserError(f"{source}: {problem}, not a model file of this project; {MODEL_HINT}")


def far_note(table: pd.DataFrame, novelty: dict | None) -> str | None:
    """One line on how many images lie far from the training data, and what "far" means."""
    if novelty is None:
        return "this model file predates novelty flags: rerun training to flag far images"
    if novelty["threshold"] is None:
        return "no val set in training: images far from the training data are not flagged"
    far = int(table["far_from_training"].sum())
    if not far:
        return None
    return (
        f"{far} of {len(table)} images are far from the training data (far_from_training: "
        f"distance_to_training above {novelty['threshold']:.1f}, farther out than "
        f"{100 * novelty['quantile']:.0f}% of the {novelty['val_images']} val images); their "
        "predicted classes are guesses"
    )


def predict_command(args: argparse.Namespace) -> None:
    """`s5cl predict`: the table to --out, or to stdout."""
    if bool(args.images) == bool(args.folder):
        raise UserError("give image files or --folder DIR (one of the two)")
    if args.neighbours < 0:
        raise UserError(f"--neighbours {args.neighbours}: must be 0 or more")
    if args.out is not None and args.out.is_dir():
        raise UserError(f"--out {args.out}: is a folder; give the path of a .csv file")
    paths = image_files(args.folder) if args.folder else list(args.images)
    model = load_checkpoint(args.model, hint=MODEL_HINT)
    table = predict(model, paths, args.neighbours, source=args.model)
    note = far_note(table, model.get("novelty"))
    if note:
        print(f"s5cl predict: {note}", file=sys.stderr)
    if args.out:
        with atomic_path(args.out) as tmp:
            write_csv(table, tmp)
        print(f"s5cl predict: {len(table)} images -> {args.out}", file=sys.stderr)
    else:
        write_csv(table, sys.stdout)
