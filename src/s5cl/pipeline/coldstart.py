"""Stage `coldstart`: with split.select other than random, a self-supervised embedding of the
training pool to choose the labeled images on (s5cl.training.coldstart_embedding); otherwise a
note."""

from __future__ import annotations

from s5cl import layout
from s5cl.config.params import Params
from s5cl.data.embedding_files import save_embedding
from s5cl.io import atomic_dir
from s5cl.pipeline.split import training_pool


def coldstart(params: Params) -> str:
    with atomic_dir(layout.COLDSTART) as folder:
        if params.split.select == "random":  # the default: a note, without loading torch
            save_embedding(folder, None, None, {})
            return "not used (split.select is random)"
        from s5cl.pipeline.common import open_packed
        from s5cl.training.coldstart_embedding import pool_embedding
        from s5cl.training.device import pick_device

        pool = training_pool(params)
        vectors, logged = pool_embedding(params, open_packed(params), pool, pick_device())
        save_embedding(folder, pool, vectors, logged)
    if params.model.from_features:
        how = "the features stage's cached features (model.freeze: all)"
    else:
        how = (
            f"{params.coldstart.steps} self-supervised steps, loss {logged['loss_first']:.3f} "
            f"-> {logged['loss_last']:.3f}"
        )
    return f"{len(pool)} pool images embedded ({vectors.shape[1]} dims) by {how}"
