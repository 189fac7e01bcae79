"""Stage `split`: labeled / unlabeled / val / test roles from a seed (s5cl.datasets.split)."""

from __future__ import annotations

from s5cl import layout
from s5cl.datasets.packed import PackedDataset
from s5cl.datasets.prepare import INDEX
from s5cl.datasets.split import make_split, originals
from s5cl.io import read_parquet, write_parquet
from s5cl.params import Params


def split(params: Params) -> str:
    data = PackedDataset.open(layout.packed_dir(params.data.name))
    index = read_parquet(layout.packed_dir(params.data.name) / INDEX)
    table = make_split(
        index["label"].to_numpy(),
        params.split,
        params.seed,
        data.class_names,
        index["subset"].to_numpy(),
        originals(index),
    )
    write_parquet(layout.SPLIT, table)
    counts = table["role"].value_counts()
    own = [s for s in ("val", "test") if (index["subset"] == s).any()]
    note = f" ({' and '.join(own)} from the dataset's own split)" if own else ""
    return (
        ", ".join(
            f"{role} {counts.get(role, 0)}" for role in ("labeled", "unlabeled", "val", "test")
        )
        + note
    )
