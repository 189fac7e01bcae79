"""The embedding cold-start selection chooses on (split.select), before any label is used.

A short self-supervised run on the training pool: instance-only SupCon at s5cl.tau_u (an
image's weak and strong views are its only positives), the same network, views, optimiser, lr
and unlabeled batch as the s5cl phase. It reads no label. With a frozen encoder
(model.freeze: all) there is nothing to train: the features stage's cached features of the
plain images are the embedding.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from s5cl.config.params import Params
from s5cl.data.augment import pixel_kernels, training_views
from s5cl.data.packed import PackedDataset
from s5cl.model.network import build_model, embed_and_predict
from s5cl.training.device import augment_chunk, configure
from s5cl.training.feature_cache import FeatureCache
from s5cl.training.losses import supcon
from s5cl.training.methods import optimizer_for, update_step
from s5cl.training.streams import UnlabeledBatches

SEED = 4  # its RNGs start from params.seed * 100 + SEED (the phases use 1 to 3)


def pool_embedding(
    params: Params, data: PackedDataset, pool: np.ndarray, device: torch.device
) -> tuple[np.ndarray, dict[str, float]]:
    """The embeddings (len(pool) x D) of the packed images `pool`, and what the run logged
    (first and last loss; nothing for cached features)."""
    if params.model.from_features:
        cache = FeatureCache.open(params)
        return np.asarray(cache.plain[pool], dtype=np.float32), {}
    seed = params.seed * 100 + SEED
    model = build_model(params.model, data.num_classes, seed, int(data.images.shape[1]))
    configure(model, params.compute, device, int(data.images.shape[1]))
    model.train()
    cfg = params.s5cl
    optimizer = optimizer_for(model, cfg)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    batches = UnlabeledBatches(pool, cfg.batch_unlabeled, gen)
    chunk, kernels = augment_chunk(device), pixel_kernels(params.compute.fuse_augment, device)
    losses = []
    bar = tqdm(range(params.coldstart.steps), desc="coldstart", unit="step", dynamic_ncols=True)
    for step in bar:
        rows, _ = next(batches)
        x = training_views(
            [data.batch(rows, device)], params.augment, gen, data.mean, data.std, chunk,
            channels_last=True, kernels=kernels,
        )  # fmt: skip
        instances = torch.arange(len(rows), device=device)
        loss = supcon(model.embed(x), instances, cfg.tau_u)
        update_step(optimizer, loss, "the self-supervised loss", step)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    embeddings, _ = embed_and_predict(model, data, pool, device, progress="coldstart embed")
    return embeddings, {"loss_first": losses[0], "loss_last": losses[-1]}
