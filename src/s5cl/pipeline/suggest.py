"""Stage `suggest` (and `s5cl suggest`): the next `suggest.count` images of the unlabeled pool
to label, chosen by `suggest.strategy` on the final model's embeddings and probabilities."""

from __future__ import annotations

import numpy as np

from s5cl import layout
from s5cl.config.params import Params
from s5cl.data.packing import INDEX
from s5cl.data.splitting import originals
from s5cl.io import atomic_dir, read_parquet, write_csv
from s5cl.labelling.selection import select
from s5cl.labelling.suggestion_files import SHEET, TO_LABEL, contact_sheet, to_label_table
from s5cl.model.network import embed_and_predict
from s5cl.pipeline.common import for_inference, open_split
from s5cl.training.device import pick_device


def suggest(params: Params, model_stage: str = "retrain") -> str:
    cfg = params.suggest
    data, table = open_split(params)
    index = read_parquet(layout.packed_dir(params.data.name) / INDEX, columns=["path", "md5"])
    own = originals(index) == np.arange(len(index))  # a copy is labeled with its original
    in_pool = table["role"].isin(["labeled", "unlabeled"]).to_numpy() & own
    pool = np.flatnonzero(in_pool)
    labels = np.where(table["role"].to_numpy()[pool] == "labeled", data.labels[pool], -1)
    device = pick_device()
    model = for_inference(model_stage, params, device)
    embeddings, probabilities = embed_and_predict(
        model, data, pool, device, cfg.batch_size, progress="suggest"
    )
    count = min(cfg.count, int((labels < 0).sum()))
    chosen, scores = select(
        cfg.strategy, embeddings, count, params.seed, labels, probabilities, data.num_classes
    )
    rows = pool[chosen]
    frame = to_label_table(
        rows, index["path"].to_numpy()[rows], scores, probabilities[chosen], data.class_names
    )
    with atomic_dir(layout.SUGGEST) as folder:
        write_csv(frame, folder / TO_LABEL)
        captions = [
            f"#{rank} {guess} {sure:.0%}"
            for rank, guess, sure in frame[["rank", "prediction", "confidence"]].itertuples(
                index=False
            )
        ]
        contact_sheet(data.images[rows], captions, folder / SHEET)
    return (
        f"{count} of {int((labels < 0).sum())} unlabeled images by {cfg.strategy} -> "
        f"{layout.SUGGEST / TO_LABEL}, {layout.SUGGEST / SHEET}"
    )
