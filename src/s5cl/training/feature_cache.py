"""Frozen-backbone runs from cached features.

With `model.freeze: all` the encoder never changes, so running it at every step of every phase
repeats the same work. The `features` stage runs it once, no-grad (bf16 on a GPU), over
`model.feature_views` weak and `model.feature_views` strong views of every packed image (drawn
per image by the same augmentations as training) and over the plain images, into

    data/features/views.npy   N x 2 x V x F float16   [:, 0] weak views, [:, 1] strong views
    data/features/plain.npy   N x F float16           plain images (validation)
    data/features/features.json   what they were made from (checked by every reader)

The training phases then draw, for each image of a batch, one of its V weak and one of its V
strong cached views (from the phase's generator) and train the embedder and classifier on them:
same batches, same losses, same schedule; a step costs a few small matmuls instead of a
backbone pass. Nothing depends on the split, so every seed and budget can share one cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from s5cl import layout
from s5cl.config.params import FEATURES_MADE_FROM, Params, values_of
from s5cl.data.augment import normalize, pixel_kernels, to_float, training_views
from s5cl.data.fetch import md5_file
from s5cl.data.packed import PackedDataset
from s5cl.data.packing import INDEX
from s5cl.errors import UserError
from s5cl.io import read_json, rerun_hint
from s5cl.model.network import S5CLNet
from s5cl.training.device import augment_chunk

VIEWS, PLAIN = "views.npy", "plain.npy"
INFO = layout.FEATURES_INFO.name
VIEW_SEED = 5_000  # the views' generator for view v starts from VIEW_SEED + v
BATCH = 64  # images a pass; the views' parameters are drawn per batch of this size


def made_from(params: Params, packed: Path) -> dict[str, Any]:
    """What a cache must be made from to serve a run with `params`: the params the features
    stage is cached on, the packed images (their index's md5) and the weights file's md5."""
    weights = params.model.weights
    return {
        "params": values_of(params, FEATURES_MADE_FROM),
        "packed_index_md5": md5_file(packed / INDEX),
        "weights_md5": md5_file(Path(weights)) if Path(weights).is_file() else None,
    }


def encoder_features(model: S5CLNet, x: torch.Tensor) -> np.ndarray:
    """Normalised images -> their encoder features as float16, on the CPU."""
    return model.encode(x.contiguous(memory_format=torch.channels_last)).half().cpu().numpy()


@torch.no_grad()
def write_features(
    model: S5CLNet, data: PackedDataset, params: Params, device: torch.device, folder: Path
) -> tuple[int, int]:
    """Run the frozen encoder of `model` over every packed image into `folder` (which must
    exist): the V weak and V strong views of each image, then the plain image. Returns
    (images, forward passes). The views of batch k of view v come from a generator seeded
    VIEW_SEED + v, advanced over batches 0..k-1, so any batch can be made again alone."""
    model.eval()
    n, views = len(data.labels), params.model.feature_views
    dim = model.embedder.in_features
    cache = np.lib.format.open_memmap(folder / VIEWS, "w+", np.float16, (n, 2, views, dim))
    plain = np.lib.format.open_memmap(folder / PLAIN, "w+", np.float16, (n, dim))
    chunk = augment_chunk(device)
    kernels = pixel_kernels(params.compute.fuse_augment, device)
    starts = range(0, n, BATCH)
    bar = tqdm(total=len(starts) * (views + 1), desc="features", unit="batch", leave=False)
    for view in range(views):
        gen = torch.Generator().manual_seed(VIEW_SEED + view)
        for start in starts:
            rows = np.arange(start, min(start + BATCH, n))
            x = training_views(
                [data.batch(rows, device)], params.augment, gen, data.mean, data.std, chunk,
                channels_last=True, kernels=kernels,
            )  # fmt: skip
            out = encoder_features(model, x)
            cache[rows, 0, view], cache[rows, 1, view] = out[: len(rows)], out[len(rows) :]
            bar.update()
    for start in starts:
        rows = np.arange(start, min(start + BATCH, n))
        x = normalize(to_float(data.batch(rows, device)), data.mean, data.std)
        plain[rows] = encoder_features(model, x)
        bar.update()
    bar.close()
    cache.flush()
    plain.flush()
    return n, len(starts) * (2 * views + 1)


@dataclass
class FeatureCache:
    """The features stage's output, read by the training phases."""

    views: np.ndarray  # N x 2 x V x F float16 (memmap)
    plain: np.ndarray  # N x F float16 (memmap)

    @classmethod
    def open(cls, params: Params, folder: Path = layout.FEATURES) -> FeatureCache:
        """The cache in `folder`, after checking it was made for `params` and these images:
        a cache of other params is one line saying what differs and what to run."""
        info = read_json(folder / INFO)
        if not info.get("used"):
            raise UserError(
                f"{folder / INFO}: made with model.freeze != all; {rerun_hint(folder / INFO)}"
            )
        wanted = made_from(params, layout.packed_dir(params.data.name))
        made = info["made_from"]
        if made != wanted:
            keys = [k for k in wanted["params"] if made["params"].get(k) != wanted["params"][k]]
            if made["packed_index_md5"] != wanted["packed_index_md5"]:
                keys.append("the packed images")
            if made["weights_md5"] != wanted["weights_md5"]:
                keys.append("the weights file's content (dvc repro --force features)")
            raise UserError(
                f"{folder}: made for other {', '.join(keys)}; {rerun_hint(folder / INFO)}"
            )
        views = np.load(folder / VIEWS, mmap_mode="r")
        plain = np.load(folder / PLAIN, mmap_mode="r")
        return cls(views, plain)

    @property
    def num_views(self) -> int:
        return int(self.views.shape[2])

    def training_views(
        self, batches: list[np.ndarray], gen: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        """What augment.training_views gives for images, from the cache: for each batch of
        packed rows, one cached weak view of each image then one strong view, chosen
        uniformly from `gen`; batch after batch. Returns (2 sum B) x F float32 on `device`."""
        parts = []
        for rows in batches:
            rows = np.asarray(rows)
            pick = torch.randint(0, self.num_views, (2, len(rows)), generator=gen).numpy()
            parts += [self.views[rows, 0, pick[0]], self.views[rows, 1, pick[1]]]
        return torch.from_numpy(np.concatenate(parts)).to(device).float()

    def plain_features(self, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.plain[np.asarray(rows)])).to(device).float()
