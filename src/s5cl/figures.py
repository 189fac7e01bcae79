"""Every figure the pipeline draws is written twice, as PNG (for the report page and a quick
look) and as SVG (for a paper: vector, editable), from one matplotlib figure.

The SVG is made reproducible: no date in its metadata and fixed element ids (svg.hashsalt), so
the same run writes the same bytes and DVC caches it as the same file.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from s5cl.io import atomic_path

# A class name is text: "$x^$" would otherwise be parsed as TeX (and fail).
matplotlib.rcParams["text.parse_math"] = False
matplotlib.rcParams["svg.hashsalt"] = "s5cl"  # the same ids in every SVG of the same figure
FORMATS = ("png", "svg")
DPI = 120


def save_figure(fig: plt.Figure, stem: Path) -> bytes:
    """Write `fig` to `stem`.png and `stem`.svg (atomically) and close it; return the PNG."""
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=DPI, bbox_inches="tight")
    for kind in FORMATS:
        with atomic_path(stem.with_suffix(f".{kind}")) as tmp:
            if kind == "png":
                tmp.write_bytes(png.getvalue())
            else:
                fig.savefig(tmp, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return png.getvalue()
