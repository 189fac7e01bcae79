"""Decode every image once into `images.u8` (an N x H x W x 3 uint8 memmap) so training never
touches an image file again; write `index.parquet` and `stats.json` (mean/std for normalisation).

Memory stays flat however large the dataset: image files are decoded by a process pool with a
bounded number of chunks in flight, .npz arrays are streamed a block at a time, and finished
images are appended to the file with plain writes (no memmap is held open while writing, so
written pages do not pile up in this process's resident memory).
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections import deque
from collections.abc import Iterator
from contextlib import closing
from multiprocessing import Pool
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from s5cl.data.fetch import md5_bytes
from s5cl.data.npz import iter_rows
from s5cl.data.registry import COLUMNS, MANIFEST, UNLABELED
from s5cl.errors import UserError
from s5cl.io import atomic_dir, read_parquet, write_csv, write_json

IMAGES = "images.u8"
INDEX = "index.parquet"
STATS = "stats.json"
SKIPPED = "skipped.csv"  # files left out with data.on_bad_image: skip, and why
CHUNK = 64  # images per task sent to a decoding process

# 8-bit modes PIL converts to RGB faithfully. Deeper ones (16-bit, 32-bit, float) are refused,
# as convert("RGB") would clip them to a mostly white image without a word; so are 8-bit colour
# spaces PIL cannot convert without a colour profile (LAB, HSV).
EIGHT_BIT_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}
DEEP_MODES = ("I", "F")  # and every "I;16..." mode
MIN_SIDE = 8  # pixels: anything smaller is not an image tile (an icon, a placeholder)
MAX_ASPECT = 2.0  # a longer side beyond this times the shorter one would be squashed by resizing


class Decoded(NamedTuple):
    image: np.ndarray | None  # size x size x 3 uint8; None when `problem` says why not
    md5: str  # of the file's bytes (or the array row's)
    problem: str | None
    width: int  # as stored, before resizing
    height: int
    frames: int = 1  # a multi-page TIFF or an animated GIF has more; the first is packed


def to_rgb(image: Image.Image, size: int) -> np.ndarray:
    """Any 8-bit PIL image -> size x size x 3 uint8, bilinear; transparency is composited on
    white (the slide background; a transparent pixel has no colour of its own)."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def image_problem(image: Image.Image) -> str | None:
    """Why an image that opened fine is still not one to train on, or None."""
    width, height = image.size
    if image.mode.startswith("I;16") or image.mode in DEEP_MODES:
        return f"pixel mode {image.mode} (16-bit, 32-bit or float): expected an 8-bit image"
    if image.mode not in EIGHT_BIT_MODES:
        return (
            f"pixel mode {image.mode}: a colour space PIL does not convert to RGB; save it as RGB"
        )
    if min(width, height) < MIN_SIDE:
        return f"{width}x{height} pixels, smaller than {MIN_SIDE} a side"
    if max(width, height) > MAX_ASPECT * min(width, height):
        return f"{width}x{height} pixels: resizing to a square would squash it"
    return None


def decode_file(path: str, size: int, missing: str = "rerun download") -> Decoded:
    """An image file -> Decoded; a file that is not a usable image comes back with `problem`.
    An unreadable file is an error whose fix is `missing`."""
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror}); {missing}") from None
    digest = md5_bytes(raw)
    if not raw:
        return Decoded(None, digest, "empty file (0 bytes)", 0, 0)
    try:
        with warnings.catch_warnings():  # over MAX_IMAGE_PIXELS: a warning, unless made an error
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as opened:
                problem = image_problem(opened)
                width, height = opened.size
                if problem is not None:
                    return Decoded(None, digest, problem, width, height)
                frames = int(getattr(opened, "n_frames", 1))
                opened.load()
                turned = ImageOps.exif_transpose(opened)  # as every viewer shows it
                width, height = turned.size
                return Decoded(to_rgb(turned, size), digest, None, width, height, frames)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        pixels = f"{int(pixels.group(1)):,}" if pixels else "too many"
        return Decoded(
            None,
            digest,
            f"{pixels} pixels, over PIL's decompression-bomb limit of "
            f"{Image.MAX_IMAGE_PIXELS:,} (a whole slide, not a tile?)",
            0,
            0,
        )
    except UnidentifiedImageError:
        return Decoded(None, digest, "not an image (PIL cannot identify it)", 0, 0)
    except (OSError, ValueError, SyntaxError) as error:  # truncated or corrupt pixel data
        return Decoded(None, digest, f"truncated or corrupt image ({error})", 0, 0)


def _decode_chunk(task: tuple[list[str], int]) -> list[Decoded]:
    paths, size = task
    return [decode_file(path, size) for path in paths]


def _file_images(paths: list[str], size: int, workers: int) -> Iterator[list[Decoded]]:
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


def _array_images(manifest: pd.DataFrame, raw_dir: Path, size: int) -> Iterator[list[Decoded]]:
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
                yield [
                    Decoded(
                        to_rgb(Image.fromarray(block[i]), size),
                        md5_bytes(block[i].tobytes()),
                        None,
                        block.shape[2],
                        block.shape[1],
                    )
                    for i in take[first : first + CHUNK]
                ]
            wanted += len(take)
            offset += len(block)
            if wanted == len(rows):
                break
        if wanted != len(rows):
            raise UserError(f"{path}: fewer rows than the manifest lists; rerun the download")


class ChannelHistogram:
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


OFF_SIZE = 1.25  # a side this much larger or smaller than the usual one is worth a warning


def _warn_off_size(sources: pd.Series, widths: np.ndarray, heights: np.ndarray) -> None:
    """Images far from the dataset's usual size (another magnification, a thumbnail) are
    resized like the rest, but say so and name one."""
    usual = pd.Series(list(zip(widths, heights, strict=True))).mode()[0]
    scale = np.maximum(widths / usual[0], heights / usual[1])
    shrink = np.minimum(widths / usual[0], heights / usual[1])
    odd = np.flatnonzero((scale > OFF_SIZE) | (shrink < 1 / OFF_SIZE))
    if len(odd):
        first = odd[0]
        warnings.warn(
            f"{len(odd)} images are far from the usual {usual[0]}x{usual[1]}, e.g. "
            f"{sources.iloc[first]} ({widths[first]}x{heights[first]}); resized like the rest",
            stacklevel=2,
        )


def pack_images(
    raw_dir: Path,
    out_dir: Path,
    size: int,
    workers: int | None = None,
    on_bad_image: str = "error",
) -> dict:
    """Pack the dataset listed in `raw_dir/manifest.parquet` into `out_dir` (atomically).

    A file that is not a usable 8-bit image stops prepare with its name (on_bad_image="error")
    or is left out and listed in `skipped.csv` ("skip"). mean/std come from the `train` and
    `unlabeled` subsets only, so a dataset's own test set never leaks into the normalisation.
    An image without a label has label -1 and class_name "" in the index.
    """
    manifest_path = raw_dir / MANIFEST
    manifest = read_parquet(manifest_path)
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
    in_train = manifest["subset"].isin(("train", UNLABELED)).to_numpy()
    kept = np.zeros(len(manifest), bool)
    widths, heights = np.zeros(len(manifest), int), np.zeros(len(manifest), int)
    skipped: list[tuple[str, str]] = []
    several: list[tuple[str, int]] = []  # images of more than one frame: (source, frames)
    sums = ChannelHistogram()
    with atomic_dir(out_dir) as tmp:
        row = 0
        with (
            closing(chunks),  # on an error, stop the decoding processes now
            open(tmp / IMAGES, "wb") as out,
            tqdm(total=len(manifest), desc="prepare", unit="img", dynamic_ncols=True) as bar,
        ):
            for chunk in chunks:
                good, good_in_train = [], []
                for item in chunk:
                    source = manifest["source"].iloc[row]
                    if item.md5 != expected[row]:
                        raise UserError(
                            f"{source}: changed since download listed it (md5 differs); "
                            "rerun download (dvc repro)"
                        )
                    widths[row], heights[row] = item.width, item.height
                    if item.frames > 1:
                        several.append((source, item.frames))
                    if item.problem is None:
                        kept[row] = True
                        good.append(item.image)
                        good_in_train.append(in_train[row])
                    elif on_bad_image == "skip":
                        skipped.append((source, item.problem))
                    else:
                        raise UserError(
                            f"{source}: {item.problem}; remove or replace it, or set "
                            "data.on_bad_image: skip"
                        )
                    row += 1
                if good:
                    images = np.stack(good)
                    out.write(images.tobytes())
                    sums.add(images[np.array(good_in_train)])
                bar.update(len(chunk))
        if several:
            warnings.warn(
                f"{len(several)} images hold more than one frame (a multi-page TIFF or an "
                f"animated GIF), e.g. {several[0][0]} ({several[0][1]} frames): only the first "
                "frame of each is packed",
                stacklevel=2,
            )
        if skipped:
            warnings.warn(
                f"skipped {len(skipped)} bad files (data.on_bad_image: skip), e.g. "
                f"{skipped[0][0]}: {skipped[0][1]}; all listed in {out_dir / SKIPPED}",
                stacklevel=2,
            )
        write_csv(pd.DataFrame(skipped, columns=["path", "problem"]), tmp / SKIPPED)
        listed_classes = set(manifest["class_name"]) - {""}
        manifest = manifest[kept].reset_index(drop=True)
        has_label = (manifest["subset"] != UNLABELED).to_numpy()
        class_names = sorted(manifest["class_name"][has_label].unique())
        lost = sorted(listed_classes - set(class_names))
        if lost:
            raise UserError(
                f"class {lost[0]} has no usable images left after skipping bad files "
                f"(see {out_dir / SKIPPED}); remove the class or add images"
            )
        if len(class_names) < 2:
            raise UserError(
                f"{manifest_path}: one class only ({class_names[0]}); a classifier needs at "
                "least 2 (add a class folder, or check data.root)"
            )
        if not is_array.any():
            _warn_off_size(manifest["source"], widths[kept], heights[kept])
        mean, std = sums.mean_std()
        is_array = is_array[kept]
        number = {name: i for i, name in enumerate(class_names)}
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
                "label": np.where(has_label, manifest["class_name"].map(number), -1).astype(
                    "int64"
                ),
                "class_name": manifest["class_name"],
                "subset": manifest["subset"],
                "md5": manifest["md5"],
                "width": widths[kept],
                "height": heights[kept],
                **{c: manifest[c] for c in manifest.columns if c not in COLUMNS},  # patient, ...
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
                if subset != UNLABELED
            },
            "mean": mean,
            "std": std,
            "skipped": len(skipped),
        }
        if not has_label.all():  # only then: a dataset of labeled images keeps its bytes
            stats["unlabeled"] = int((~has_label).sum())
        write_json(tmp / STATS, stats)
    return stats
