"""Read access to a packed dataset: the uint8 memmap, its index and normalisation stats."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from s5cl.data.packing import IMAGES, INDEX, STATS
from s5cl.errors import UserError
from s5cl.io import read_input, read_json, read_parquet, rerun_hint

if TYPE_CHECKING:  # torch only where batches go to a device: the split stage never loads it
    import torch


@dataclass
class PackedDataset:
    images: np.ndarray  # N x H x W x 3 uint8 (memmap: pages are read on demand)
    labels: np.ndarray  # N int64
    class_names: list[str]
    mean: list[float]
    std: list[float]

    @classmethod
    def open(cls, folder: Path) -> PackedDataset:
        """The packed dataset in `folder`; a missing, truncated or foreign file of it is one
        line naming the file and the stage to rerun (prepare)."""
        if not folder.is_dir():
            raise UserError(f"{folder}: no packed dataset here; {rerun_hint(folder / STATS)}")
        stats = read_json(folder / STATS)
        shape = tuple(stats["shape"])
        expected = int(np.prod(shape))
        found = read_input(folder / IMAGES, lambda p: p.stat().st_size, "image file")
        if found != expected:
            raise UserError(
                f"{folder / IMAGES}: {found:,} bytes, {expected:,} expected for "
                f"{shape[0]:,} images of {shape[1]}x{shape[2]} (truncated or replaced?); "
                f"{rerun_hint(folder / IMAGES)}"
            )
        labels = read_parquet(folder / INDEX, columns=["label"])["label"].to_numpy()
        if len(labels) != shape[0]:
            raise UserError(
                f"{folder / INDEX}: {len(labels):,} rows for {shape[0]:,} images; "
                f"{rerun_hint(folder / INDEX)}"
            )
        images = np.memmap(folder / IMAGES, np.uint8, "r", shape=shape)
        return cls(images, labels, stats["class_names"], stats["mean"], stats["std"])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def batch(self, indices: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
        """Rows `indices` as a B x 3 x H x W uint8 tensor on `device`: one gather from the
        memmap, uint8 over the bus (4x less than float), pinned for an asynchronous copy."""
        import torch

        block = torch.from_numpy(self.images[np.asarray(indices)])
        if device.type == "cuda":
            block = block.pin_memory()
        return block.to(device, non_blocking=True).permute(0, 3, 1, 2)
