"""The training loop shared by warmup, s5cl and retrain, for every method; read it top to bottom.

One step draws an m-per-class labeled batch and (when the objective uses them) an unlabeled
batch, makes a weak and a strong view of every image on the device, and hands the views to the
method's objective (methods.py), which computes its loss and updates the model. With a
frozen encoder (model.freeze: all) the views are the features stage's cached encoder features
of views of the same images (feature_cache.py), and the objective's network skips its encoder.
For S5CL, what the unlabeled images are pulled towards is the only difference between phases:

    warmup   no unlabeled stream                       (SupCon_l + CE)
    s5cl     instance ids: self-supervised             (+ SupCon_u at tau_u)
    retrain  pseudo-labels where kept, else instance   (+ SupCon at tau_p)
    s5cl with switch_step: instance ids, then the classifier's online argmax (the paper's loop)

What differs between phases (the params section, the steps, the RNG seed, the model it
continues) is declared once, in the phase table (s5cl.config.phases).

Every `checkpoint.every` steps the whole state goes to a resume checkpoint (resume.py); a run
that finds a compatible one continues from it and ends with the same bits as one never stopped.
A non-finite loss stops the stage with its step number, before the update, keeping the last
checkpoint.

Under torchrun (distributed.py) each process runs this same loop on its shard of every global
batch; rank 0 alone validates, logs and writes checkpoints.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from s5cl.config.params import Params
from s5cl.config.phases import Phase
from s5cl.data.augment import pixel_kernels, training_views
from s5cl.data.packed import PackedDataset
from s5cl.data.splitting import indices
from s5cl.errors import UserError
from s5cl.model.network import S5CLNet, embed_and_predict
from s5cl.training import distributed
from s5cl.training.device import augment_chunk, configure, pick_device
from s5cl.training.feature_cache import FeatureCache
from s5cl.training.methods import Objective
from s5cl.training.resume import Resume, restore_rng_states, rng_states
from s5cl.training.streams import LabeledBatches, UnlabeledBatches


def seed_everything(seed: int, rank: int = 0) -> torch.Generator:
    """Seed every RNG a step touches (numpy's global one drives MPerClassSampler); return the
    generator of the augmentations. Each torchrun process gets its own (rank 0 the
    single-process one), so no two shards share the randomness of their views."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    own = seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    return torch.Generator().manual_seed(own)


def validation_accuracy(
    model: S5CLNet, data: PackedDataset, val: np.ndarray, device, cache: FeatureCache | None
) -> float:
    """Accuracy on the val images, through the encoder or from its cached features."""
    if len(val) == 0:
        return float("nan")
    if cache is None:
        _, probs = embed_and_predict(model, data, val, device)
        predicted = probs.argmax(1)
    else:
        with torch.no_grad():
            predicted = model(cache.plain_features(val, device)).argmax(1).cpu().numpy()
    model.train()
    return float((predicted == data.labels[val]).mean())


class NoLog:
    """Stands in for dvclive's Live where nothing is logged (torchrun ranks above 0)."""

    step = 0

    def __enter__(self) -> NoLog:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def log_metric(self, name: str, value: float) -> None:
        return None


def log_entry(live: Any, entry: dict[str, float]) -> None:
    live.step = entry["step"]
    for key, value in entry.items():
        if key != "step":
            live.log_metric(f"train/{key}" if key != "val_acc" else "val/acc", value)


def train(
    phase: Phase,
    objective: Objective,
    params: Params,
    data: PackedDataset,
    split: pd.DataFrame,
    live: Any,
    resume: Resume | None,
) -> dict[str, Any]:
    """Train `objective.model` in place for the phase's steps, on the roles `split` gives the
    images of `data`; log each step to `live` (dvclive's Live, or NoLog); continue from
    `resume`'s checkpoint if there is one and write one every `resume.every` steps (None: no
    checkpoints, read or written; the benchmark's runs). Returns the
    model's checkpoint dict: weights (an MPL teacher's too; no optimizer state, which only
    resume checkpoints carry), the params, the data's classes and normalisation, the last
    step's values."""
    cfg, steps = phase.config(params), phase.steps_of(params)
    saved = resume.load() if resume else None  # before any work
    device = pick_device()
    # model.freeze: all: the views' features come from the features stage's cache
    cache = FeatureCache.open(params) if params.model.from_features else None
    chunk = augment_chunk(device)
    kernels = pixel_kernels(params.compute.fuse_augment and cache is None, device)
    gen = seed_everything(params.seed * 100 + phase.seed, distributed.rank())
    model = objective.model
    for network in objective.networks():
        configure(network, params.compute, device, int(data.images.shape[1]))
    objective.distribute()
    model.train()
    main = distributed.is_main()
    labeled, val = indices(split, "labeled"), indices(split, "val")
    distributed.check_divides(cfg.batch_labeled, f"{phase.section}.batch_labeled")
    labeled_stream = LabeledBatches(
        labeled, data.labels[labeled], cfg.batch_labeled, cfg.m_per_class, data.num_classes
    )
    unlabeled_stream = None
    if objective.uses_unlabeled:
        unlabeled = indices(split, "unlabeled")
        if len(unlabeled) == 0:
            raise UserError(
                f"{phase.name}: {params.method} needs unlabeled images; the split has none"
            )
        unlabeled_stream = UnlabeledBatches(unlabeled, cfg.batch_unlabeled, gen)
        distributed.check_divides(unlabeled_stream.batch_size, "s5cl.batch_unlabeled")
    history: list[dict[str, float]] = []
    val_acc = float("nan")

    if saved is not None:  # continue exactly where the checkpoint left off
        model.load_trained_state(saved["model"])
        objective.load_state_dict(saved)
        labeled_stream.load_state_dict(saved["labeled_stream"])
        if unlabeled_stream is not None:
            unlabeled_stream.load_state_dict(saved["unlabeled_stream"])
        restore_rng_states(saved["rng"][distributed.rank()], gen)
        history = saved["history"]
        val_acc = next((h["val_acc"] for h in reversed(history) if "val_acc" in h), val_acc)
        for entry in history:  # dvclive started afresh: replay what was logged before
            log_entry(live, entry)
        if main:
            print(f"{phase.name}: resuming from {resume.path} at step {saved['step']} of {steps}")
    first = saved["step"] if saved is not None else 0

    bar = tqdm(
        range(first, steps),
        desc=f"{phase.name} ({params.method})",
        unit="step",
        initial=first,
        total=steps,
        dynamic_ncols=True,
        disable=not main,
    )
    step = first
    try:
        for step in bar:
            idx_l = distributed.shard(next(labeled_stream))  # the whole batch with one process
            rows = [idx_l]
            y_l = torch.from_numpy(data.labels[idx_l]).to(device)
            pos_u = None
            if unlabeled_stream is not None:
                idx_u, pos_u = map(distributed.shard, next(unlabeled_stream))
                rows.append(idx_u)
            if cache is None:  # images: uint8 to the device, then their views
                x = training_views(
                    [data.batch(r, device) for r in rows],
                    params.augment,
                    gen,
                    data.mean,
                    data.std,
                    chunk,
                    channels_last=True,
                    kernels=kernels,
                )
            else:  # the cached features of views of the same images
                x = cache.training_views(rows, gen, device)

            try:
                parts, logits = objective.update(x, y_l, pos_u, step)
            except FloatingPointError as error:  # raised before the update: the model is intact
                bar.close()
                raise UserError(
                    f"{error}, so training stopped (lower {phase.section}.lr?); "
                    + (resume.kept() if resume else "no checkpoints")
                ) from None

            parts["train_acc"] = float((logits.argmax(1) == y_l).float().mean())
            parts = distributed.mean(parts)  # each rank's covers its shard: log the global batch's
            if main and ((step + 1) % cfg.eval_every == 0 or step + 1 == steps):
                val_acc = validation_accuracy(model, data, val, device, cache)
                parts["val_acc"] = val_acc
            history.append({"step": step, **parts})
            log_entry(live, history[-1])
            bar.set_postfix(loss=f"{parts['loss']:.3f}", val_acc=f"{val_acc:.3f}")

            if resume is not None and resume.due(step + 1, steps):
                rng = distributed.gather_objects(
                    rng_states(gen)
                )  # every rank's, for an exact resume
                if main:
                    resume.save(
                        {
                            "step": step + 1,
                            "model": model.trained_state(),  # frozen parts are rebuilt
                            **objective.state_dict(),
                            "labeled_stream": labeled_stream.state_dict(),
                            "unlabeled_stream": unlabeled_stream and unlabeled_stream.state_dict(),
                            "rng": rng,
                            "history": history,
                            "params": params.model_dump(),
                        }
                    )

    except KeyboardInterrupt:  # Ctrl-C: where it stopped and what a rerun continues from
        bar.close()
        kept = resume.kept() if resume else "no checkpoints"
        raise UserError(
            f"stopped by Ctrl-C at step {step + 1} of {steps}; {kept}; rerun the stage to continue"
        ) from None

    return {
        "stage": phase.name,
        "method": params.method,
        "step": steps,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **objective.carried_state(),  # an MPL teacher; optimizer state only in resume files
        "params": params.model_dump(),
        "class_names": data.class_names,
        "mean": data.mean,
        "std": data.std,
        "image_size": int(data.images.shape[1]),
        "final": {k: v for k, v in history[-1].items() if k != "step"},
    }
