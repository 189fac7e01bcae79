"""The dataset registry: what `download` does for each `data.name`.

Every dataset ends as a `manifest.csv` in `data/raw/<name>/`: one row per image with its source
(a file path, or a row of an array file), its class name and the md5 of its bytes. `prepare`
decodes from the manifest and re-checks those md5s, so a source that changed after download is
caught, not silently packed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from s5cl.errors import UserError
from s5cl.io import atomic_path, write_parquet
from s5cl.params import DataParams

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
MANIFEST = "manifest.parquet"


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def md5_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fetch_digits(cfg: DataParams, out: Path) -> pd.DataFrame:
    """scikit-learn's 1,797 8x8 handwritten digits, shipped inside the package: no network."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).round().astype(np.uint8)  # 0..16 -> 0..255
    with atomic_path(out / "digits.npz") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, images=images, labels=digits.target.astype(np.int64))
    names = [str(name) for name in digits.target_names]
    return pd.DataFrame(
        {
            "source": [f"digits.npz#{i}" for i in range(len(images))],
            "class_name": [names[t] for t in digits.target],
            "md5": [md5_bytes(img.tobytes()) for img in images],
        }
    )


def fetch_folder(cfg: DataParams, out: Path) -> pd.DataFrame:
    """Any `<root>/<class>/<image>` tree; images stay where they are, the manifest points there."""
    root = Path(cfg.root or "").expanduser()
    if not root.is_dir():
        raise UserError(f"data.root={cfg.root!r}: not a folder (expected <root>/<class>/<image>)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise UserError(f"{root}: no class folders inside (expected <root>/<class>/<image>)")
    rows = []
    for class_dir in class_dirs:
        files = sorted(
            p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise UserError(f"{class_dir}: class folder has no images; remove it or add images")
        rows += [(str(p.resolve()), class_dir.name, md5_file(p)) for p in files]
    return pd.DataFrame(rows, columns=["source", "class_name", "md5"])


FETCHERS: dict[str, Callable[[DataParams, Path], pd.DataFrame]] = {
    "digits": fetch_digits,
    "folder": fetch_folder,
}


def download(cfg: DataParams, out: Path) -> pd.DataFrame:
    """Fetch (or list and verify) a dataset into `out` and write its manifest."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = FETCHERS[cfg.name](cfg, out)
    write_parquet(out / MANIFEST, manifest)
    return manifest
