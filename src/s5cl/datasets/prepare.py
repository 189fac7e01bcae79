"""Decode every image once into `images.u8` (an N x H x W x 3 uint8 memmap) so training never
touches an image file again; write `index.parquet` and `stats.json` (mean/std for normalisation).

Memory stays flat however large the dataset: image files are decoded by a process pool with a
bounded number of chunks in flight, .npz arrays are streamed a block at a time, and finished
images are appended to the file with plain writes (no memmap is held open while writing, so
written pages do not pile up in this process's resident memory).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from s5cl.datasets.fetch import md5_bytes
from s5cl.datasets.npz import iter_rows
from s5cl.datasets.registry import MANIFEST
from s5cl.errors import UserError
from s5cl.io import atomic_dir, write_json

IMAGES = "images.u8"
INDEX = "index.parquet"
STATS = "stats.json"
CHUNK = 64  # images per task sent to a decoding process


def to_rgb(image: Image.Image, size: int) -> np.ndarray:
    """Any PIL image (grayscale, RGBA, palette, RGB) -> size x size x 3 uint8, bilinear."""
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def decode_file(path: str, size: int) -> tuple[np.ndarray, str]:
    """An image file -> (size x size x 3 uint8, md5 of the file's bytes)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror}); rerun download") from None
    try:
        with Image.open(Path(path)) as opened:
            opened.load()
            return to_rgb(opened, size), md5_bytes(raw)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise UserError(f"{path}: not a readable image ({error}); remove or replace it") from None


def _decode_chunk(task: tuple[list[str], int]) -> tuple[np.ndarray, list[str]]:
    paths, size = task
    decoded = [decode_file(path, size) for path in paths]
    return np.stack([image for image, _ in decoded]), [digest for _, digest in decoded]


def _file_images(
    paths: list[str], size: int, workers: int
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Decoded chunks in order; at most 2 chunks per worker are in flight or waiting."""
    tasks = ((paths[i : i + CHUNK], size) for i in range(0, len(paths), CHUNK))
    with Pool(workers) as pool:
        pending: deque = deque()
        for task in tasks:
            pending.append(pool.apply_async(_decode_chunk, (task,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _array_images(
    manifest: pd.DataFrame, raw_dir: Path, size: int
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Rows of .npz arrays, streamed in manifest order (each array's rows must be ascending)."""
    groups = (manifest["source"] + "\0" + manifest["member"]).to_numpy()
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    for start, stop in zip(starts, np.r_[starts[1:], len(manifest)], strict=True):
        rows = manifest["row"].to_numpy()[start:stop]
        if np.any(np.diff(rows) <= 0):
            raise UserError(f"{raw_dir / MANIFEST}: rows of one array must ascend; rerun download")
        path = raw_dir / manifest["source"].iloc[start]
        wanted, offset = 0, 0
        for block in iter_rows(path, manifest["member"].iloc[start]):
            take = rows[wanted:][rows[wanted:] < offset + len(block)] - offset
            for first in range(0, len(take), CHUNK):
                part = take[first : first + CHUNK]
                images = [to_rgb(Image.fromarray(block[i]), size) for i in part]
                yield np.stack(images), [md5_bytes(block[i].tobytes()) for i in part]
            wanted += len(take)
            offset += len(block)
            if wanted == len(rows):
                break
        if wanted != len(rows):
            raise UserError(f"{path}: fewer rows than the manifest lists; rerun the download")


class _ChannelHistogram:
    """Per-channel counts of each value 0..255: exact, order-independent mean/std in 3 KB."""

    def __init__(self) -> None:
        self.counts = np.zeros((3, 256), np.int64)

    def add(self, images: np.ndarray) -> None:
        for channel in range(3):
            self.counts[channel] += np.bincount(images[..., channel].ravel(), minlength=256)

    def mean_std(self) -> tuple[list[float], list[float]]:
        values = np.arange(256) / 255.0
        n = self.counts.sum(1)
        mean = (self.counts * values).sum(1) / n
        var = (self.counts * values**2).sum(1) / n - mean**2
        return mean.round(6).tolist(), np.sqrt(np.maximum(var, 1e-12)).round(6).tolist()


def prepare(raw_dir: Path, out_dir: Path, size: int, workers: int | None = None) -> dict:
    """Pack the dataset listed in `raw_dir/manifest.parquet` into `out_dir` (atomically).

    mean/std come from the `train` subset only, so a dataset's own test set never leaks into
    the normalisation.
    """
    manifest_path = raw_dir / MANIFEST
    if not manifest_path.exists():
        raise UserError(f"{manifest_path}: missing; run the download stage first")
    manifest = pd.read_parquet(manifest_path)
    class_names = sorted(manifest["class_name"].unique())
    workers = workers or min(os.cpu_count() or 1, 8)
    is_array = manifest["member"].to_numpy() != ""
    if is_array.all():
        chunks = _array_images(manifest, raw_dir, size)
    elif not is_array.any():
        sources = [str(raw_dir / s) for s in manifest["source"]]
        chunks = _file_images(sources, size, workers)
    else:
        raise UserError(f"{manifest_path}: mixes image files and arrays; rerun download")
    expected = manifest["md5"].to_numpy()
    in_train = (manifest["subset"] == "train").to_numpy()
    sums = _ChannelHistogram()
    with atomic_dir(out_dir) as tmp:
        done = 0
        with (
            open(tmp / IMAGES, "wb") as out,
            tqdm(total=len(manifest), desc="prepare", unit="img", dynamic_ncols=True) as bar,
        ):
            for images, digests in chunks:
                for j, digest in enumerate(digests):
                    if digest != expected[done + j]:
                        raise UserError(
                            f"{manifest['source'].iloc[done + j]}: changed since download "
                            "listed it (md5 differs); rerun download (dvc repro -f download)"
                        )
                out.write(images.tobytes())
                sums.add(images[in_train[done : done + len(images)]])
                done += len(images)
                bar.update(len(images))
        mean, std = sums.mean_std()
        index = pd.DataFrame(
            {
                "path": np.where(
                    is_array,
                    manifest["source"]
                    + "#"
                    + manifest["member"]
                    + ":"
                    + manifest["row"].astype(str),
                    manifest["source"],
                ),
                "label": manifest["class_name"].map(class_names.index).astype("int64"),
                "class_name": manifest["class_name"],
                "subset": manifest["subset"],
                "md5": manifest["md5"],
            }
        )
        index.to_parquet(tmp / INDEX, index=False)
        stats = {
            "shape": [len(manifest), size, size, 3],
            "class_names": class_names,
            "counts": {
                subset: {
                    name: int(((index["class_name"] == name) & (index["subset"] == subset)).sum())
                    for name in class_names
                }
                for subset in sorted(index["subset"].unique())
            },
            "mean": mean,
            "std": std,
        }
        write_json(tmp / STATS, stats)
    return stats
