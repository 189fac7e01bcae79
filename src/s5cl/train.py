"""The training loop shared by warmup, s5cl and retrain; read it top to bottom.

One step draws an m-per-class labeled batch and (except in warm-up) an unlabeled batch, makes a
weak and a strong view of every image, embeds all views in one forward pass, and applies
`S5CLLoss`. What the unlabeled images are pulled towards is the only difference between phases:

    warmup   no unlabeled stream                       (SupCon_l + CE)
    s5cl     instance ids: self-supervised             (+ SupCon_u at tau_u)
    retrain  pseudo-labels where kept, else instance   (+ SupCon at tau_p)
    s5cl with switch_step: instance ids, then the classifier's online argmax (the paper's loop)
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from s5cl.augment import normalize, strong_view, to_float, weak_view
from s5cl.datasets.packed import PackedDataset
from s5cl.datasets.streams import labeled_batches, unlabeled_batches
from s5cl.losses import S5CLLoss
from s5cl.models import S5CLNet, embed_and_predict
from s5cl.params import AugmentParams, Params, S5CLParams, SupervisedParams

STAGE_SEEDS = {"warmup": 1, "s5cl": 2, "retrain": 3}


def pick_device() -> torch.device:
    """`cuda` when present, else CPU; S5CL_DEVICE=cpu forces the CPU."""
    wanted = os.environ.get("S5CL_DEVICE", "auto")
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(wanted)


def seed_everything(seed: int) -> torch.Generator:
    """Seed every RNG a step touches (numpy's global one drives MPerClassSampler)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass
class UnlabeledTargets:
    """What the unlabeled images are pulled towards (see the module docstring)."""

    mode: str  # "instance" | "pseudo" | "online"
    instance_tau: float  # tau_u, w_u: for instance ids
    instance_weight: float
    tau: float  # tau_p, w_p: for pseudo-labels
    weight: float
    pseudo: np.ndarray | None = None  # per unlabeled position: class id, or -1 if not kept
    switch_step: int | None = None  # mode "online": instance ids until this step


def _two_views(x: torch.Tensor, aug: AugmentParams, gen: torch.Generator) -> list[torch.Tensor]:
    return [weak_view(x, aug, gen), strong_view(x, aug, gen)]


def validation_accuracy(model: S5CLNet, data: PackedDataset, val: np.ndarray, device) -> float:
    if len(val) == 0:
        return float("nan")
    _, probs = embed_and_predict(model, data.images[val], data.mean, data.std, device)
    model.train()
    return float((probs.argmax(1) == data.labels[val]).mean())


def unlabeled_targets(
    targets: UnlabeledTargets, positions: np.ndarray, step: int, num_classes: int, device
) -> tuple[torch.Tensor | None, float, float]:
    """Targets of one unlabeled batch and the (tau, weight) of their SupCon term.

    Instance ids are offset by num_classes so they never collide with a class id. Returns None
    targets for the online mode after its switch: the step computes them from the classifier.
    """
    n_u = len(positions)
    instance = torch.arange(n_u, device=device) + num_classes
    if targets.mode == "pseudo":
        pseudo = torch.from_numpy(targets.pseudo[positions]).to(device)
        return torch.where(pseudo >= 0, pseudo, instance), targets.tau, targets.weight
    if targets.mode == "online" and step >= (targets.switch_step or 0):
        return None, targets.tau, targets.weight
    return instance, targets.instance_tau, targets.instance_weight


def step_loss(
    model: S5CLNet,
    x: torch.Tensor,
    y_l: torch.Tensor,
    y_u: torch.Tensor | None,
    loss_fn: S5CLLoss,
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """One forward pass over all views and the S5CL loss.

    x: normalised views, (2 B_l [+ 2 B_u]) x 3 x H x W, ordered labeled weak, labeled strong,
    unlabeled weak, unlabeled strong. y_l: B_l labels. y_u: B_u targets; None with unlabeled
    views means "the classifier's argmax on the weak views" (the paper's online pseudo-labels).
    Returns (loss, its parts, classifier logits of the labeled weak views).
    """
    n_l = len(y_l)
    emb = model.embed(x)
    emb_l, emb_u = emb[: 2 * n_l], emb[2 * n_l :]
    logits = model.classifier(emb_l[:n_l])  # CE on the weak views of labeled images
    if len(emb_u) == 0:
        loss, parts = loss_fn(emb_l, y_l, logits)
        return loss, parts, logits
    if y_u is None:
        with torch.no_grad():
            y_u = model.classifier(emb_u[: len(emb_u) // 2]).argmax(1)
    loss, parts = loss_fn(emb_l, y_l, logits, emb_u, y_u)
    return loss, parts, logits


def train(
    stage: str,
    model: S5CLNet,
    params: Params,
    cfg: SupervisedParams,
    steps: int,
    data: PackedDataset,
    labeled: np.ndarray,
    val: np.ndarray,
    unlabeled: np.ndarray | None = None,
    targets: UnlabeledTargets | None = None,
    live: Any = None,
) -> dict[str, Any]:
    """Train `model` in place for `steps` steps; returns a checkpoint dict (with its config)."""
    device = pick_device()
    gen = seed_everything(params.seed * 100 + STAGE_SEEDS[stage])
    model.to(device, memory_format=torch.channels_last).train()  # faster convolutions
    optimizer = torch.optim.Adamax(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    labeled_stream = labeled_batches(
        labeled, data.labels[labeled], cfg.batch_labeled, cfg.m_per_class
    )
    unlabeled_stream = None
    if targets is not None:
        assert isinstance(cfg, S5CLParams) and unlabeled is not None
        unlabeled_stream = unlabeled_batches(unlabeled, cfg.batch_unlabeled, gen)
    num_classes = data.num_classes
    history: list[dict[str, float]] = []
    val_acc = float("nan")

    bar = tqdm(range(steps), desc=stage, unit="step", dynamic_ncols=True)
    for step in bar:
        idx_l = next(labeled_stream)
        x_l = to_float(data.batch(idx_l, device))
        y_l = torch.from_numpy(data.labels[idx_l]).to(device)
        views = _two_views(x_l, params.augment, gen)
        if unlabeled_stream is not None:
            idx_u, pos_u = next(unlabeled_stream)
            views += _two_views(to_float(data.batch(idx_u, device)), params.augment, gen)
        x = normalize(torch.cat(views), data.mean, data.std)
        x = x.contiguous(memory_format=torch.channels_last)

        y_u, loss_fn = None, S5CLLoss(cfg.tau_l, cfg.w_l, cfg.w_c)
        if targets is not None:
            y_u, tau, weight = unlabeled_targets(targets, pos_u, step, num_classes, device)
            loss_fn = S5CLLoss(cfg.tau_l, cfg.w_l, cfg.w_c, tau, weight)
        loss, parts, logits = step_loss(model, x, y_l, y_u, loss_fn)
        if not np.isfinite(parts["loss"]):
            raise FloatingPointError(f"{stage}: loss is {parts['loss']} at step {step}")

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        parts["train_acc"] = float((logits.argmax(1) == y_l).float().mean())
        if (step + 1) % cfg.eval_every == 0 or step + 1 == steps:
            val_acc = validation_accuracy(model, data, val, device)
            parts["val_acc"] = val_acc
        history.append({"step": step, **parts})
        if live is not None:
            live.step = step
            for key, value in parts.items():
                live.log_metric(f"train/{key}" if key != "val_acc" else "val/acc", value)
        bar.set_postfix(loss=f"{parts['loss']:.3f}", val_acc=f"{val_acc:.3f}")

    return {
        "stage": stage,
        "step": steps,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "params": params.model_dump(),
        "class_names": data.class_names,
        "mean": data.mean,
        "std": data.std,
        "image_size": int(data.images.shape[1]),
        "final": {k: v for k, v in history[-1].items() if k != "step"},
    }
