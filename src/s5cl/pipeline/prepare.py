"""Stage `prepare`: decode every image once into the packed memmap (s5cl.datasets.prepare)."""

from __future__ import annotations

from s5cl import layout
from s5cl.datasets.prepare import prepare as pack_dataset
from s5cl.params import Params


def prepare(params: Params) -> str:
    out = layout.packed_dir(params.data.name)
    cfg = params.data
    stats = pack_dataset(layout.raw_dir(cfg.name), out, cfg.size, cfg.workers, cfg.on_bad_image)
    n, h, w, _ = stats["shape"]
    skipped = f" ({stats['skipped']} bad files skipped)" if stats["skipped"] else ""
    return f"{n} images packed as {h}x{w} RGB into {out}{skipped}"
