"""Stage `features`: with model.freeze: all, the frozen encoder's features of every image,
once (s5cl.training.feature_cache); otherwise a note that training runs through the encoder."""

from __future__ import annotations

from s5cl import layout
from s5cl.config.params import Params
from s5cl.io import atomic_dir, write_json


def features(params: Params) -> str:
    cfg = params.model
    with atomic_dir(layout.FEATURES) as folder:
        info_file = folder / layout.FEATURES_INFO.name
        if not cfg.from_features:  # the default: a note, without loading torch (seconds)
            write_json(info_file, {"used": False, "freeze": cfg.freeze})
            return f"not used (model.freeze is {cfg.freeze}: training runs through the encoder)"
        from s5cl.model.network import build_model
        from s5cl.pipeline.common import open_packed
        from s5cl.training.device import configure, pick_device
        from s5cl.training.feature_cache import made_from, write_features

        data = open_packed(params)
        device = pick_device()
        # The encoder the training phases will build: same params, same seed.
        model = build_model(cfg, data.num_classes, params.seed, int(data.images.shape[1]))
        configure(model, params.compute, device, int(data.images.shape[1]))
        images, passes = write_features(model, data, params, device, folder)
        info = {
            "used": True,
            "made_from": made_from(params, layout.packed_dir(params.data.name)),
            "images": images,
            "views": cfg.feature_views,
            "dim": model.embedder.in_features,
            "dtype": "float16",
        }
        write_json(info_file, info)
    return (
        f"{images} images x ({cfg.feature_views} weak + {cfg.feature_views} strong views + "
        f"plain): {passes} batches through {cfg.arch}, {model.embedder.in_features} features "
        f"each -> {layout.FEATURES}"
    )
