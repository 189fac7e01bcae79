"""The coldstart stage's output: an embedding of the training pool's packed rows (or a note
that split.select random needs none), as the split stage reads it back."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from s5cl import layout
from s5cl.errors import UserError
from s5cl.io import read_input, read_json, rerun_hint, write_json

EMBEDDING, ROWS, INFO = "embedding.npy", "rows.npy", "coldstart.json"


def save_embedding(
    folder: Path, rows: np.ndarray | None, embeddings: np.ndarray | None, logged: dict
) -> None:
    """Write the stage's output into `folder`: rows None means not used (split.select random)."""
    if rows is None:
        write_json(folder / INFO, {"used": False})
        return
    np.save(folder / EMBEDDING, embeddings)
    np.save(folder / ROWS, rows)
    write_json(folder / INFO, {"used": True, "images": len(rows), **logged})


def load_embedding(folder: Path = layout.COLDSTART) -> tuple[np.ndarray, np.ndarray]:
    """The pool's packed rows and their embeddings, as the coldstart stage wrote them."""
    if not read_json(folder / INFO).get("used"):
        raise UserError(f"{folder}: made for split.select random; {rerun_hint(folder / INFO)}")
    rows = read_input(folder / ROWS, np.load, "array")
    return rows, read_input(folder / EMBEDDING, np.load, "array")
