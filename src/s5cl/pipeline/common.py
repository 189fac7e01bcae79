"""What the stages after `split` share: the packed images with their roles, trained models."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from s5cl import layout
from s5cl.config.params import Params
from s5cl.data.packed import PackedDataset
from s5cl.errors import UserError
from s5cl.io import read_parquet, rerun_hint
from s5cl.model.network import S5CLNet, model_from_checkpoint
from s5cl.model.torch_files import load_checkpoint
from s5cl.training.device import configure


def open_packed(params: Params) -> PackedDataset:
    """The packed dataset, normalised as the backbone needs (model.mean/std) or, by default,
    by its own statistics: what training, inference and the model file all use."""
    data = PackedDataset.open(layout.packed_dir(params.data.name))
    if params.model.mean is not None:
        data = replace(data, mean=list(params.model.mean), std=list(params.model.std))
    return data


def open_split(params: Params) -> tuple[PackedDataset, pd.DataFrame]:
    """The packed dataset and the split table that gives each of its images a role. The
    dataset's labels are the split's: they differ only where a person labeled an image
    otherwise (split.labeled_csv), which training then follows."""
    data = open_packed(params)
    table = read_parquet(layout.SPLIT)
    if len(table) != len(data.labels):
        raise UserError(f"{layout.SPLIT}: stale for this dataset; {rerun_hint(layout.SPLIT)}")
    return replace(data, labels=table["label"].to_numpy()), table


def check_fits(checkpoint: dict, path: Path, data: PackedDataset) -> None:
    """A model file made on other data (another dataset, classes or image size) is one line
    naming both, not a model scored against the wrong classes."""
    ours = (data.class_names, int(data.images.shape[1]))
    theirs = (checkpoint["class_names"], checkpoint["image_size"])
    if theirs != ours:
        raise UserError(
            f"{path}: made for classes {theirs[0]} at {theirs[1]} px, but the data are "
            f"{ours[0]} at {ours[1]} px (another dataset or data.size); {rerun_hint(path)}"
        )


def for_inference(stage: str, params: Params, device: torch.device) -> S5CLNet:
    """The model stage `stage` wrote, on `device`, run as `params.compute` says; it must have
    been made for the packed data (check_fits)."""
    path = layout.model_path(stage)
    checkpoint = load_checkpoint(path)
    data = open_packed(params)
    check_fits(checkpoint, path, data)
    model = model_from_checkpoint(checkpoint, path, rerun_hint(path))
    configure(model, params.compute, device, int(data.images.shape[1]))
    return model
