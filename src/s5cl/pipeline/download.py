"""Stage `download`: fetch and verify the dataset, then list it (s5cl.datasets.registry)."""

from __future__ import annotations

from pathlib import Path

from s5cl import layout
from s5cl.datasets.registry import download as fetch_dataset
from s5cl.params import Params


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
