"""Stage `split`: labeled / unlabeled / val / test roles from a seed (s5cl.data.splitting); the
labeled images drawn at random per class or chosen on the coldstart stage's embedding
(split.select), plus those labeled by hand (split.labeled_csv)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from s5cl import layout
from s5cl.config.params import Params
from s5cl.data.embedding_files import load_embedding
from s5cl.data.packed import PackedDataset
from s5cl.data.packing import INDEX
from s5cl.data.registry import INDEX_COLUMNS
from s5cl.data.splitting import add_labels, make_split, originals
from s5cl.errors import UserError
from s5cl.io import read_csv, read_input, read_parquet, rerun_hint, write_parquet

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
        groups=split_groups(params, index),
    )
    return table, index


def split_groups(params: Params, index: pd.DataFrame) -> np.ndarray | None:
    """split.group's column of the packed index (None when not set): every labeled image needs
    a value, as a group left empty could not be kept apart. An image without a label may have
    none (a folder of them has no column): it then trains, unlabeled, and is never scored."""
    column = params.split.group
    if column is None:
        return None
    own = [c for c in index.columns if c not in INDEX_COLUMNS]
    if column not in own:
        where = f"its columns are {', '.join(own)}" if own else "it has no column of your own"
        raise UserError(
            f"split.group={column!r}: not a column of the dataset's CSV ({where}); add it "
            "(dvc repro) or set split.group: null"
        )
    groups = index[column].fillna("").astype(str).to_numpy()
    empty = np.flatnonzero((groups == "") & (index["label"] >= 0).to_numpy())
    if len(empty):
        raise UserError(
            f"split.group={column!r}: {len(empty)} images have no {column}, e.g. "
            f"{index['path'].iloc[empty[0]]}; give every image one"
        )
    return groups


def training_pool(params: Params) -> np.ndarray:
    """The rows labels may be chosen from: neither val, test nor a copy of another image;
    the same whatever split.select and the budget are."""
    table, index = _split(params)
    own = originals(index) == np.arange(len(index))
    return np.flatnonzero(table["role"].isin(["labeled", "unlabeled"]).to_numpy() & own)


def coldstart_chooser(params: Params, n_classes: int) -> Chooser:
    """split.select's choice of `budget` rows of the pool, on the coldstart stage's embedding
    (n_classes: how many classes there are, for probcover; no image's class is read)."""
    from s5cl.labelling.selection import select  # scikit-activeml: imported only when asked for

    rows, embedding = load_embedding()

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
    notes = []
    own = [s for s in ("val", "test") if (index["subset"] == s).any()]
    if own:
        notes.append(f"{' and '.join(own)} from the dataset's own split")
    if params.split.labeled_csv:
        source = params.split.labeled_csv
        given = read_input(source, read_csv, "table")
        before = int((table["role"] == "labeled").sum())
        table, changed = add_labels(table, index, given, data.class_names, source)
        added = int((table["role"] == "labeled").sum()) - before
        differ = f", {changed} differ from the dataset's own" if changed else ""
        notes.append(f"{len(given)} labels from {source} ({added} new{differ})")
    write_parquet(layout.SPLIT, table)
    if choose is not None:
        notes.append(f"labeled chosen by {params.split.select}")
    counts = table["role"].value_counts()
    parts = [f"{role} {counts.get(role, 0)}" for role in ("labeled", "unlabeled", "val", "test")]
    without = int((table["label"] < 0).sum())
    if without:  # real unlabeled images: say how many of the unlabeled set have no label at all
        parts[1] += f" ({without} without a label)"
    if counts.get("excluded", 0):
        parts.append(f"excluded {counts['excluded']} (unlabeled images of val/test groups)")
    if params.split.group:
        groups = table.assign(group=split_groups(params, index)).query("group != ''")
        per_part = groups.groupby("role")["group"].nunique()
        roles = ("labeled", "val", "test")
        notes.append(
            f"{params.split.group}s: " + ", ".join(f"{per_part.get(r, 0)} {r}" for r in roles)
        )
    return ", ".join(parts) + "".join(f"; {n}" for n in notes)
