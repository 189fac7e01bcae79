"""Stage `download`: fetch and verify the dataset, then list it (s5cl.datasets.registry)."""

from __future__ import annotations

from pathlib import Path

from s5cl import layout
from s5cl.datasets.registry import UNLABELED
from s5cl.datasets.registry import download as fetch_dataset
from s5cl.params import Params


def download(params: Params) -> str:
    cfg = params.data
    raw = layout.raw_dir(cfg.name)
    manifest = fetch_dataset(cfg, raw, Path(cfg.downloads))
    subsets = manifest["subset"].value_counts()
    kinds = ("train", "val", "test", UNLABELED)
    parts = ", ".join(f"{subsets[s]} {s}" for s in kinds if s in subsets)
    classes = manifest.loc[manifest["subset"] != UNLABELED, "class_name"].nunique()
    return f"{len(manifest)} images ({parts}) in {classes} classes listed in {raw}"
