"""The comparison: methods x label budgets x seeds, one pipeline run each, then one table.

    python -m s5cl.sweep run --method s5cl --budget 5 --seed 0 --out results/sweep/s5cl/5/0
    python -m s5cl.sweep aggregate --out results results/sweep/*/*/*/run.json

`run` reuses the project's packed dataset (it must be prepared) and runs the stages the stage
table marks for the sweep (split, warmup, s5cl, pseudolabel, retrain, evaluate) in-process
inside its own folder, with `method`, `seed` and the label budget overridden; everything else
comes from the params file. Snakemake's
`workflow/rules/sweep.smk` calls both, one cached job per run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from s5cl import layout, stages
from s5cl.errors import UserError
from s5cl.io import atomic_path, read_json, write_json
from s5cl.metrics import plt
from s5cl.params import Metric, Params, load_params

SCALARS = typing.get_args(Metric)  # every scalar evaluate.json has per model
RUN = "run.json"


def budget_label(kind: str, value: float) -> str:
    """5 labels per class -> '5'; a fraction 0.001 -> '0.1%'."""
    return f"{value:g}" if kind == "labels_per_class" else f"{value * 100:g}%"


def run_overrides(params: Params, method: str, budget: float, seed: int) -> list[str]:
    kind = params.sweep.budget
    other = "label_fraction" if kind == "labels_per_class" else "labels_per_class"
    value = int(budget) if kind == "labels_per_class" else budget
    return [
        f"method={method}",
        f"seed={seed}",
        f"split.{kind}={value}",
        f"split.{other}=null",
    ]


@contextlib.contextmanager
def _inside(folder: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def run_one(
    params_file: Path, sets: list[str], method: str, budget: float, seed: int, out: Path
) -> dict:
    """One pipeline run in `out`; returns (and writes to out/run.json) what identifies it.
    `sets` are `--set` overrides (Snakemake passes its config this way)."""
    base = load_params(params_file, sets)
    overrides = run_overrides(base, method, budget, seed)
    params = load_params(params_file, sets + overrides)
    packed = layout.packed_dir(params.data.name).resolve()
    if not packed.is_dir():
        raise UserError(f"{packed}: missing; run download and prepare first (snakemake prepare)")
    out.mkdir(parents=True, exist_ok=True)
    link = out / layout.packed_dir(params.data.name)
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(packed, target_is_directory=True)
    with _inside(out):
        for stage in stages.sweep_stages():
            print(f"{stage.name}: {stages.function(stage.name)(params)}", flush=True)
    run = {
        "method": method,
        "budget_kind": params.sweep.budget,
        "budget": budget,
        "seed": seed,
        "dataset": params.data.name,
        "overrides": overrides,
    }
    write_json(out / RUN, run)
    return run


def collect(run_files: list[Path]) -> pd.DataFrame:
    """One row per run: what identifies it, then every scalar metric of each evaluated model
    (the final model's without a prefix, the warm-up's and s5cl phase's prefixed)."""
    rows = []
    for run_file in run_files:
        run = read_json(run_file)
        scores = read_json(run_file.parent / layout.METRICS / "evaluate.json")
        row = {k: run[k] for k in ("dataset", "method", "budget_kind", "budget", "seed")}
        for model, prefix in (("final", ""), ("warmup", "warmup_"), ("s5cl", "s5cl_phase_")):
            row |= {f"{prefix}{key}": scores[model][key] for key in SCALARS}
        rows.append(row)
    if not rows:
        raise UserError("no runs to aggregate")
    return pd.DataFrame(rows).sort_values(["budget", "method", "seed"], ignore_index=True)


def summarise(table: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
    """mean and std over seeds, per method and budget."""
    grouped = table.groupby(["budget", "method"], sort=True)[list(metrics)]
    summary = grouped.agg(["mean", "std"])
    summary[("runs", "count")] = grouped.size()  # a full key: the columns are a MultiIndex
    return summary


def markdown(table: pd.DataFrame, metrics: tuple[str, ...], methods: list[str]) -> str:
    """One row per budget and method: mean ± std over seeds of each metric."""
    kind = table["budget_kind"].iloc[0]
    summary = summarise(table, metrics)
    head = ["labels" if kind == "labels_per_class" else "label fraction", "method", "runs"]
    lines = [
        "| " + " | ".join(head + list(metrics)) + " |",
        "|" + "---|" * (len(head) + len(metrics)),
    ]
    for budget in sorted(table["budget"].unique()):
        for method in [m for m in methods if (budget, m) in summary.index]:
            row = summary.loc[(budget, method)]
            spread = {m: np.nan_to_num(row[(m, "std")]) for m in metrics}  # one seed: 0
            cells = [f"{row[(m, 'mean')]:.3f} ± {spread[m]:.3f}" for m in metrics]
            label, runs = budget_label(kind, budget), int(row[("runs", "count")])
            lines.append(f"| {label} | {method} | {runs} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(
    table: pd.DataFrame,
    metric: str,
    methods: list[str],
    path: Path,
    reference: dict[str, dict[float, float]] | None = None,
) -> None:
    """`metric` against the label budget: one line per method, error bars = std over seeds;
    published reference figures, if given, as dashed lines in the same colour."""
    kind = table["budget_kind"].iloc[0]
    summary = summarise(table, (metric,))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colours = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for method in methods:
        if method not in summary.index.get_level_values("method"):
            continue
        rows = summary.xs(method, level="method")
        ax.errorbar(
            rows.index, rows[(metric, "mean")], yerr=rows[(metric, "std")].fillna(0),
            marker="o", capsize=3, label=method, color=colours.get(method),
        )  # fmt: skip
        if reference and method in reference:
            points = sorted(reference[method].items())
            ax.plot(
                [b for b, _ in points], [v for _, v in points], linestyle="--", marker="x",
                color=colours.get(method), alpha=0.6, label=f"{method} (paper)",
            )  # fmt: skip
    budgets = sorted(table["budget"].unique())
    if kind == "label_fraction" or (len(budgets) > 2 and budgets[-1] / budgets[0] > 20):
        ax.set_xscale("log")
    ax.set_xticks(budgets, [budget_label(kind, b) for b in budgets])
    ax.set_xlabel("labels per class" if kind == "labels_per_class" else "labeled fraction")
    ax.set_ylabel(f"test {metric.replace('_', ' ')}")
    ax.set_title(f"{table['dataset'].iloc[0]}: mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def aggregate(params_file: Path, sets: list[str], run_files: list[Path], out: Path) -> pd.DataFrame:
    """results/summary.csv, summary.md and the figure from the runs' outputs."""
    params = load_params(params_file, sets)
    table = collect(run_files)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "summary.csv") as tmp:
        table.to_csv(tmp, index=False)
    metrics = tuple(dict.fromkeys((params.sweep.metric, "accuracy", "macro_f1", "weighted_f1",
                                   "knn_accuracy", "precision_at_k")))  # fmt: skip
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(markdown(table, metrics, list(params.sweep.methods)))
    reference = params.sweep.reference
    plot(
        table, params.sweep.metric, list(params.sweep.methods), out / "budget_curve.png", reference
    )
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m s5cl.sweep", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("run", help="one pipeline run in its own folder")
    one.add_argument("--method", required=True)
    one.add_argument("--budget", type=float, required=True)
    one.add_argument("--seed", type=int, required=True)
    one.add_argument("--out", type=Path, required=True)
    agg = commands.add_parser("aggregate", help="summary.csv, summary.md, budget_curve.png")
    agg.add_argument("--out", type=Path, required=True)
    agg.add_argument("runs", type=Path, nargs="+", help="the runs' run.json files")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            run_one(args.params.resolve(), args.sets, args.method, args.budget, args.seed, args.out)
        else:
            table = aggregate(args.params, args.sets, args.runs, args.out)
            print(f"aggregate: {len(table)} runs -> {args.out}/summary.csv, .md, budget_curve.png")
    except UserError as error:
        print(f"sweep: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
