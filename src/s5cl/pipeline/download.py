"""Stage `download`: fetch and verify the dataset, then list it (s5cl.data.registry)."""

from __future__ import annotations

from pathlib import Path

from s5cl import layout
from s5cl.config.params import Params, values_of
from s5cl.data.registry import UNLABELED, download_dataset
from s5cl.io import write_json
from s5cl.pipeline import stages

LISTED = "listed.json"  # the data.* values the manifest was listed with (checked by prepare)


def listed_with(params: Params) -> dict:
    """The download stage's params, as it records them beside the manifest."""
    return values_of(params, stages.get("download").params)


def download(params: Params) -> str:
    cfg = params.data
    raw = layout.raw_dir(cfg.name)
    manifest = download_dataset(cfg, raw, Path(cfg.downloads))
    write_json(raw / LISTED, listed_with(params))
    subsets = manifest["subset"].value_counts()
    kinds = ("train", "val", "test", UNLABELED)
    parts = ", ".join(f"{subsets[s]} {s}" for s in kinds if s in subsets)
    classes = manifest.loc[manifest["subset"] != UNLABELED, "class_name"].nunique()
    return f"{len(manifest)} images ({parts}) in {classes} classes listed in {raw}"
