"""Stages `warmup`, `s5cl` and `retrain`: the three phases of training (s5cl.training.loop).

A phase is resolved once from its entry in the stage table (s5cl.pipeline.stages.Phase): its params
section and steps, its seed, the model it continues, and S5CL's unlabeled targets. Under
torchrun each process runs this; rank 0 alone writes, and the others return no summary.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from dvclive import Live

from s5cl import layout
from s5cl.config.params import Params, values_of
from s5cl.config.phases import Phase
from s5cl.data.fetch import md5_file
from s5cl.data.packing import INDEX, STATS
from s5cl.data.splitting import indices
from s5cl.errors import UserError
from s5cl.evaluation.novelty import fit_novelty, reference_rows
from s5cl.io import atomic_dir, read_parquet, rerun_hint
from s5cl.labelling.pseudo_labels import pseudo_targets
from s5cl.model.network import build_model, embed_and_predict, encode_rows, model_from_checkpoint
from s5cl.model.torch_files import load_checkpoint, save_checkpoint
from s5cl.pipeline import stages
from s5cl.pipeline.common import check_fits, open_split
from s5cl.pipeline.stages import Stage
from s5cl.training import distributed
from s5cl.training.device import autocast_dtype, describe, pick_device
from s5cl.training.loop import NoLog, train
from s5cl.training.methods import UnlabeledTargets, make_objective, targets_of_phase
from s5cl.training.resume import Resume


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


def phase_targets(phase: Phase, params: Params, split: pd.DataFrame) -> UnlabeledTargets | None:
    """S5CL's unlabeled targets in `phase`, the pseudolabel stage's file read for retrain."""
    if phase.unlabeled != "pseudo":
        return targets_of_phase(phase, params)
    pseudo = read_parquet(layout.PSEUDO)
    if not np.array_equal(pseudo["index"].to_numpy(), indices(split, "unlabeled")):
        raise UserError(f"{layout.PSEUDO}: does not match the current split; run pseudolabel")
    return targets_of_phase(phase, params, pseudo_targets(pseudo))


def input_files(stage: Stage, params: Params) -> list[Path]:
    """The files whose md5 stands for the stage's inputs: each file it reads, and for the
    packed images their index (the md5 of every image) and stats (hashing a packed file of
    15 GB at every start would take minutes)."""
    packed = layout.packed_dir(params.data.name)
    files = []
    for path in map(Path, stages.resolve_paths(stage.deps, params.data.name)):
        if path == packed:
            files += [path / INDEX, path / STATS]
        elif path == layout.FEATURES:  # read only with a frozen encoder
            if params.model.from_features:  # what the cache was made from, md5s included
                files.append(layout.FEATURES_INFO)
        else:
            files.append(path)
    return files


def run_fingerprint(stage: Stage, params: Params) -> dict[str, Any]:
    """What must be equal for a checkpoint to continue this run: the params the stage is cached
    on (dotted keys), the md5 of each input file, and the number of processes."""
    return {
        "params": values_of(params, stage.params),
        "inputs": {str(path): md5_file(path) for path in input_files(stage, params)},
        "processes": distributed.world_size(),
    }


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
        phase_targets(phase, params, split),
        teacher_state=previous and previous.get("teacher"),
    )
    resume = Resume(stage.name, params.checkpoint.every, run_fingerprint(stage, params))
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
            checkpoint = train(phase, objective, params, data, split, log, resume)
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
