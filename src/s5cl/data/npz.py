"""Reading `.npz` arrays (MedMNIST's format) a block of rows at a time.

`np.load` would inflate a whole array into memory; streaming the `.npy` member out of the zip
keeps memory flat however many images the file holds.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from s5cl.errors import UserError


def array_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return [name.removesuffix(".npy") for name in zf.namelist() if name.endswith(".npy")]


def iter_rows(path: Path, key: str, block: int = 1024) -> Iterator[np.ndarray]:
    """Yield array `key` of the npz at `path` as consecutive blocks of at most `block` rows."""
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:
        raise UserError(f"{path}: not a readable .npz ({error}); rerun the download") from None
    with zf:
        try:
            member = zf.open(f"{key}.npy")
        except KeyError:
            raise UserError(
                f"{path}: has no array {key!r} (it has {', '.join(array_names(path))})"
            ) from None
        with member:
            version = np.lib.format.read_magic(member)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = read_header(member)
            if fortran_order or dtype.hasobject or not shape:
                raise UserError(f"{path}: array {key!r} is not a C-ordered numeric array")
            row_shape = shape[1:]
            row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
            for start in range(0, shape[0], block):
                count = min(block, shape[0] - start)
                raw = member.read(count * row_bytes)
                if len(raw) != count * row_bytes:
                    raise UserError(f"{path}: array {key!r} is truncated; rerun the download")
                yield np.frombuffer(raw, dtype=dtype).reshape(count, *row_shape)
