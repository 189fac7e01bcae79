"""What the suggest stage hands a person: the images to label as a table, and as one picture.

    suggest/to_label.csv      rank, path, row, score, prediction, confidence (best first)
    suggest/contact_sheet.png the same images in a grid, each numbered with its rank

`path` is the image's path in the dataset (the packed index's), what the labelling page
(s5cl label) and split.labeled_csv use; `row` is its row in the packed dataset.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from s5cl.io import atomic_path
from s5cl.layout import SHEET, TO_LABEL  # noqa: F401  (the suggest stage's file names)

COLUMNS = ("rank", "path", "row", "score", "prediction", "confidence")
THUMB, COLUMNS_PER_ROW, CAPTION = 128, 8, 18  # pixels, thumbnails a row, caption height


def to_label_table(
    rows: np.ndarray,
    paths: np.ndarray,
    scores: np.ndarray,
    probabilities: np.ndarray,
    class_names: list[str],
) -> pd.DataFrame:
    """One line per suggested image, in the order chosen; the model's prediction and its
    probability, so the person sees what the model thinks (and how sure it is)."""
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(rows) + 1),
            "path": paths,
            "row": rows,
            "score": np.round(scores, 6),
            "prediction": [class_names[i] for i in probabilities.argmax(1)],
            "confidence": np.round(probabilities.max(1), 4),
        },
        columns=list(COLUMNS),
    )


def contact_sheet(images: np.ndarray, captions: list[str], path: Path) -> None:
    """`images` (N x H x W x 3 uint8) as a grid of THUMB-pixel thumbnails, each with its caption
    under it, written atomically as a PNG."""
    n = len(images)
    cols = min(COLUMNS_PER_ROW, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    sheet = Image.new("RGB", (cols * THUMB, rows * (THUMB + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        x, y = (i % cols) * THUMB, (i // cols) * (THUMB + CAPTION)
        thumb = Image.fromarray(np.asarray(image)).resize((THUMB - 4, THUMB - 4), Image.NEAREST)
        sheet.paste(thumb, (x + 2, y + 2))
        draw.text((x + 4, y + THUMB + 2), caption[:22], fill="black")
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
