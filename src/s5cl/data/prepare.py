"""Decode every image once into `images.u8` (an N x H x W x 3 uint8 memmap) so training never
touches an image file again; write `index.parquet` and `stats.json` (mean/std for normalisation)."""

from __future__ import annotations

import functools
import os
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from s5cl.data.registry import MANIFEST, md5_bytes
from s5cl.errors import UserError
from s5cl.io import atomic_dir, write_json

IMAGES = "images.u8"
INDEX = "index.parquet"
STATS = "stats.json"


@functools.lru_cache(maxsize=2)
def _array_file(path: str) -> np.ndarray:
    with np.load(path) as data:
        return data["images"]


def decode(source: str, raw_dir: str, size: int) -> tuple[np.ndarray, str]:
    """An image file, or `file.npz#row` -> (size x size x 3 uint8, md5 of the source bytes)."""
    if "#" in source:
        name, row = source.rsplit("#", 1)
        array = _array_file(os.path.join(raw_dir, name))[int(row)]
        digest = md5_bytes(np.ascontiguousarray(array).tobytes())
        image = Image.fromarray(array)
    else:
        try:
            raw = Path(source).read_bytes()
        except OSError as error:
            raise UserError(f"{source}: cannot read ({error.strerror}); rerun download") from None
        digest = md5_bytes(raw)
        try:
            with Image.open(Path(source)) as opened:
                opened.load()
                image = opened.copy()
        except (UnidentifiedImageError, OSError) as error:
            raise UserError(
                f"{source}: not a readable image ({error}); remove or replace it"
            ) from None
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8), digest


def _decode_task(task: tuple[str, str, int]) -> tuple[np.ndarray, str]:
    return decode(*task)


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1], accumulated in chunks (memory stays bounded)."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].reshape(-1, 3).astype(np.float64) / 255.0
        total += block.sum(0)
        total_sq += (block**2).sum(0)
        count += len(block)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return mean.round(6).tolist(), std.round(6).tolist()


def prepare(raw_dir: Path, out_dir: Path, size: int, workers: int | None = None) -> dict:
    """Pack the dataset listed in `raw_dir/manifest.parquet` into `out_dir` (atomically)."""
    manifest_path = raw_dir / MANIFEST
    if not manifest_path.exists():
        raise UserError(f"{manifest_path}: missing; run the download stage first")
    manifest = pd.read_parquet(manifest_path)
    class_names = sorted(manifest["class_name"].unique())
    workers = workers or min(os.cpu_count() or 1, 8)
    tasks = [(src, str(raw_dir), size) for src in manifest["source"]]
    with atomic_dir(out_dir) as tmp:
        images = np.memmap(tmp / IMAGES, np.uint8, "w+", shape=(len(tasks), size, size, 3))
        expected = manifest["md5"].to_numpy()
        with Pool(workers) as pool:
            decoded = pool.imap(_decode_task, tasks, chunksize=32)
            bar = tqdm(decoded, total=len(tasks), desc="prepare", unit="img", dynamic_ncols=True)
            for i, (array, digest) in enumerate(bar):
                if digest != expected[i]:
                    raise UserError(
                        f"{tasks[i][0]}: changed since download listed it (md5 differs); "
                        "rerun the download stage (dvc repro -f download)"
                    )
                images[i] = array
        images.flush()
        mean, std = channel_stats(images)
        index = pd.DataFrame(
            {
                "path": manifest["source"],
                "label": manifest["class_name"].map(class_names.index).astype("int64"),
                "class_name": manifest["class_name"],
                "md5": manifest["md5"],
            }
        )
        index.to_parquet(tmp / INDEX, index=False)
        stats = {
            "shape": [len(tasks), size, size, 3],
            "class_names": class_names,
            "counts": {name: int((index["class_name"] == name).sum()) for name in class_names},
            "mean": mean,
            "std": std,
        }
        write_json(tmp / STATS, stats)
        del images
    return stats
