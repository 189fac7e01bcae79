"""Stages `warmup`, `s5cl` and `retrain`: the three phases of training (s5cl.train).

A phase is resolved once from its entry in the stage table (s5cl.stages.Phase): its params
section and steps, its seed, the model it continues, and S5CL's unlabeled targets. Under
torchrun each process runs this; rank 0 alone writes, and the others return no summary.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pandas as pd
import torch
from dvclive import Live

from s5cl import distributed, layout, stages
from s5cl.datasets.prepare import INDEX
from s5cl.datasets.split import indices
from s5cl.device import autocast_dtype, describe, pick_device
from s5cl.errors import UserError
from s5cl.io import atomic_dir, load_checkpoint, read_parquet, rerun_hint, save_checkpoint
from s5cl.methods import UnlabeledTargets, make_objective
from s5cl.models import build_model, embed_and_predict, encode_rows, model_from_checkpoint
from s5cl.novelty import fit_novelty, reference_rows
from s5cl.params import Params
from s5cl.pipeline.common import check_fits, open_split
from s5cl.pseudo import pseudo_targets
from s5cl.resume import Resume, fingerprint
from s5cl.train import NoLog, train


def warmup(params: Params) -> str | None:
    return run_phase(stages.get("warmup"), params)


def s5cl(params: Params) -> str | None:
    return run_phase(stages.get("s5cl"), params)


def retrain(params: Params) -> str | None:
    """S5CL with the kept pseudo-labels as targets; the other methods continue their own
    objective for the same number of steps, so every method gets the same budget."""
    return run_phase(stages.get("retrain"), params)


def previous_model(stage: str, params: Params) -> dict:
    """The model file a phase continues from; it must come from the same method."""
    checkpoint = load_checkpoint(layout.model_path(stage))
    if checkpoint.get("method", "s5cl") != params.method:
        raise UserError(
            f"{layout.model_path(stage)} was trained with method {checkpoint.get('method')!r}, "
            f"not {params.method!r}; rerun the {stage} stage"
        )
    return checkpoint


def unlabeled_targets(phase: stages.Phase, params: Params, split: pd.DataFrame):
    """What S5CL pulls the unlabeled images towards in this phase (None: no unlabeled term)."""
    cfg = params.s5cl
    weights = (cfg.tau_u, cfg.w_u, cfg.tau_p, cfg.w_p)
    if phase.unlabeled == "instance":
        mode = "instance" if cfg.switch_step is None else "online"
        return UnlabeledTargets(mode, *weights, switch_step=cfg.switch_step)
    if phase.unlabeled == "pseudo":
        pseudo = read_parquet(layout.PSEUDO)
        if not np.array_equal(pseudo["index"].to_numpy(), indices(split, "unlabeled")):
            raise UserError(f"{layout.PSEUDO}: does not match the current split; run pseudolabel")
        return UnlabeledTargets("pseudo", *weights, pseudo=pseudo_targets(pseudo))
    return None


def parameter_counts(model: torch.nn.Module) -> str:
    """How many parameters training updates and how many stay fixed (model.freeze)."""
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return f"{trained / 1e6:.2f}M parameters trained, {frozen / 1e6:.2f}M frozen"


def run_phase(stage: stages.Stage, params: Params) -> str | None:
    with distributed.processes():
        return _train_and_save(stage, params)


def _train_and_save(stage: stages.Stage, params: Params) -> str | None:
    phase = stage.phase
    data, split = open_split(params)
    previous = previous_model(phase.continues, params) if phase.continues else None
    if previous is None:
        model = build_model(params.model, data.num_classes, params.seed, data.images.shape[1])
    else:
        check_fits(previous, layout.model_path(phase.continues), data)
        path = layout.model_path(phase.continues)
        model = model_from_checkpoint(previous, path, rerun_hint(path))
    objective = make_objective(
        phase,
        model,
        params,
        data.num_classes,
        unlabeled_targets(phase, params, split),
        teacher_state=previous and previous.get("teacher"),
    )
    resume = Resume(stage.name, params.checkpoint.every, fingerprint(stage, params))
    main = distributed.is_main()  # under torchrun, rank 0 alone logs and writes
    if main:  # what runs where, before the first step
        device = pick_device()
        dtype = autocast_dtype(params.compute.precision, device, int(data.images.shape[1]))
        print(f"{stage.name}: {describe(device, dtype)}; {parameter_counts(model)}", flush=True)
    # dvclive writes into a temporary folder that replaces metrics/<stage> when training is
    # done: a failed or killed run leaves the last run's metrics, never half-written ones.
    with atomic_dir(layout.METRICS / stage.name) if main else nullcontext() as folder:
        live = Live(dir=str(folder), dvcyaml=None, save_dvc_exp=False) if main else NoLog()
        with live as log:
            checkpoint = train(stage, objective, params, data, split, log, resume)
    if not main:
        return None
    final, steps = checkpoint["final"], checkpoint["step"]
    # The labeled images' embeddings travel in the model file: `s5cl predict`'s neighbours ...
    labeled, device = indices(split, "labeled"), pick_device()
    embeddings, _ = embed_and_predict(objective.model, data, labeled, device)
    packed = layout.packed_dir(params.data.name)
    paths = read_parquet(packed / INDEX, columns=["path"])["path"].to_numpy()
    checkpoint["run"] = resume.run  # whose resume checkpoint this model makes stale
    checkpoint["labeled"] = {
        "paths": paths[labeled].tolist(),
        "labels": data.labels[labeled].tolist(),
        "embeddings": torch.from_numpy(embeddings),
    }
    # ... and the training images' feature distribution: `s5cl predict` flags far images
    reference = reference_rows(labeled, indices(split, "unlabeled"), params.seed)
    checkpoint["novelty"] = fit_novelty(
        encode_rows(objective.model, data, reference, device),
        encode_rows(objective.model, data, indices(split, "val"), device),
    )
    save_checkpoint(layout.model_path(stage.name), checkpoint)
    resume.finish()
    val = final.get("val_acc", float("nan"))
    val = "no val set" if np.isnan(val) else f"val acc {val:.3f}"
    return (
        f"{params.method}: {steps} steps, loss {final['loss']:.3f}, {val} -> "
        f"{layout.model_path(stage.name)}"
    )
