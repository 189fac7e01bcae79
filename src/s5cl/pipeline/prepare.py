"""Stage `prepare`: decode every image once into the packed memmap (s5cl.data.packing)."""

from __future__ import annotations

from s5cl import layout
from s5cl.config.params import Params
from s5cl.data.packing import pack_images
from s5cl.data.registry import MANIFEST
from s5cl.errors import UserError
from s5cl.io import read_json, rerun_hint
from s5cl.pipeline.download import LISTED, listed_with


def prepare(params: Params) -> str:
    out = layout.packed_dir(params.data.name)
    cfg = params.data
    listed = layout.raw_dir(cfg.name) / LISTED
    # without a manifest, pack_images says so; with one, it must be of these data.* values
    made = read_json(listed) if (listed.parent / MANIFEST).exists() else listed_with(params)
    wanted = listed_with(params)
    if made != wanted:  # a manifest left by another data.root (a stage run as a script)
        key = next(k for k in wanted if made.get(k) != wanted[k])
        raise UserError(
            f"{listed.parent}: listed with {key}={made.get(key)!r}, not {wanted[key]!r}; "
            f"{rerun_hint(listed)}"
        )
    stats = pack_images(layout.raw_dir(cfg.name), out, cfg.size, cfg.workers, cfg.on_bad_image)
    n, h, w, _ = stats["shape"]
    skipped = f" ({stats['skipped']} bad files skipped)" if stats["skipped"] else ""
    return f"{n} images packed as {h}x{w} RGB into {out}{skipped}"
