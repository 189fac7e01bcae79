"""Stage `split`: labeled / unlabeled / val / test roles from a seed (s5cl.datasets.split); the
labeled images drawn at random per class or chosen on the coldstart stage's embedding
(split.select), plus those labeled by hand (split.labeled_csv)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from s5cl import coldstart, layout
from s5cl.datasets.packed import PackedDataset
from s5cl.datasets.prepare import INDEX
from s5cl.datasets.split import add_labels, make_split, originals
from s5cl.errors import UserError
from s5cl.io import read_input, read_parquet, rerun_hint, write_parquet
from s5cl.params import Params

Chooser = Callable[[np.ndarray, int], np.ndarray]


def _split(params: Params, choose: Chooser | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The split table and the packed index it was made from."""
    data = PackedDataset.open(layout.packed_dir(params.data.name))
    index = read_parquet(layout.packed_dir(params.data.name) / INDEX)
    table = make_split(
        index["label"].to_numpy(),
        params.split,
        params.seed,
        data.class_names,
        index["subset"].to_numpy(),
        originals(index),
        choose,
    )
    return table, index


def training_pool(params: Params) -> np.ndarray:
    """The rows labels may be chosen from: neither val, test nor a copy of another image;
    the same whatever split.select and the budget are."""
    table, index = _split(params)
    own = originals(index) == np.arange(len(index))
    return np.flatnonzero(table["role"].isin(["labeled", "unlabeled"]).to_numpy() & own)


def coldstart_chooser(params: Params, n_classes: int) -> Chooser:
    """split.select's choice of `budget` rows of the pool, on the coldstart stage's embedding
    (n_classes: how many classes there are, for probcover; no image's class is read)."""
    from s5cl.selection import select  # scikit-activeml: imported only when asked for

    rows, embedding = coldstart.load()

    def choose(pool: np.ndarray, budget: int) -> np.ndarray:
        if not np.array_equal(np.sort(pool), np.sort(rows)):
            raise UserError(
                f"{layout.COLDSTART}: made for another pool (seed or split); "
                f"{rerun_hint(layout.COLDSTART)}"
            )
        chosen, _ = select(params.split.select, embedding, budget, params.seed, n_classes=n_classes)
        return rows[chosen]

    return choose


def split(params: Params) -> str:
    data = PackedDataset.open(layout.packed_dir(params.data.name))
    choose = None
    if params.split.select != "random":
        choose = coldstart_chooser(params, data.num_classes)
    table, index = _split(params, choose)
    note = ""
    if params.split.labeled_csv:
        source = params.split.labeled_csv
        given = read_input(source, pd.read_csv, "table")
        before = int((table["role"] == "labeled").sum())
        table, changed = add_labels(table, index, given, data.class_names, source)
        added = int((table["role"] == "labeled").sum()) - before
        note += f"; {len(given)} labels from {source} ({added} new"
        note += f", {changed} differ from the dataset's own)" if changed else ")"
    write_parquet(layout.SPLIT, table)
    counts = table["role"].value_counts()
    own = [s for s in ("val", "test") if (index["subset"] == s).any()]
    if own:
        note += f" ({' and '.join(own)} from the dataset's own split)"
    if choose is not None:
        note += f"; labeled chosen by {params.split.select}"
    return (
        ", ".join(
            f"{role} {counts.get(role, 0)}" for role in ("labeled", "unlabeled", "val", "test")
        )
        + note
    )
