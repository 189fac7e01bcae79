"""The comparison: methods x label budgets x seeds, one pipeline run each, then one table.

    python -m s5cl.pipeline.sweep run --variant base --method s5cl --budget 5 --seed 0 \
        --out results/sweep/base/s5cl/5/0
    python -m s5cl.pipeline.sweep aggregate --out results results/sweep/*/*/*/*/run.json

`run` makes the run's folder (a link to the project's packed dataset, which must be prepared),
then runs the stages the stage table marks for the sweep (`stages.sweep_stages`: the stages from
features on, up to evaluate) in a process of its own whose working folder is the run's, so every
path of `layout` lands inside it; this process never changes folder. Each run gets the
variant's settings (`sweep.variants`), `method`, `seed` and the label budget as overrides;
everything else comes from the params file. `aggregate` writes the tables and figures of
s5cl.evaluation.sweep_summary. Snakemake's `workflow/rules/sweep.smk` calls both, one cached job
per run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from s5cl import layout
from s5cl.config.params import Params, load_params
from s5cl.data.packing import INDEX
from s5cl.errors import UserError
from s5cl.io import atomic_path, read_csv, read_json, write_csv, write_json
from s5cl.labelling.oracle import answer_with_known_labels
from s5cl.pipeline import stages

RUN, ROUNDS = "run.json", "rounds.json"
LABELS = Path("labels/labels.csv")  # a round's oracle answers, inside the run's folder


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


def run_one(
    params_file: Path,
    sets: list[str],
    variant: str,
    method: str,
    budget: float,
    seed: int,
    out: Path,
) -> dict:
    """One pipeline run in `out`; returns (and writes to out/run.json) what identifies it.
    `sets` are `--set` overrides (Snakemake passes its config this way). Paths are the
    project's, the current folder's."""
    base = load_params(params_file, sets)
    overrides = base.sweep.sets_of(variant) + run_overrides(base, method, budget, seed)
    params = load_params(params_file, sets + overrides)
    weights = params.model.weights
    if weights not in ("none", "imagenet") and not Path(weights).is_absolute():
        overrides.append(f"model.weights={Path(weights).resolve()}")  # the run works in `out`
        params = load_params(params_file, sets + overrides)
    packed = layout.packed_dir(params.data.name).resolve()
    if not packed.is_dir():
        raise UserError(f"{packed}: missing; run download and prepare first (snakemake prepare)")
    out.mkdir(parents=True, exist_ok=True)
    link = out / layout.packed_dir(params.data.name)
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(packed, target_is_directory=True)
    command = [sys.executable, "-m", "s5cl.pipeline.sweep", "--params", str(params_file.resolve())]
    command += [f"--set={item}" for item in sets + overrides]
    done = subprocess.run([*command, "stages"], cwd=out, check=False)  # it prints as it goes
    if done.returncode != 0:
        raise UserError(f"the run in {out} failed (exit {done.returncode}): see above")
    run = {
        "variant": variant,
        "method": method,
        "budget_kind": params.sweep.budget,
        "budget": budget,
        "seed": seed,
        "dataset": params.data.name,
        "overrides": overrides,
        "rounds": read_json(out / ROUNDS),
    }
    write_json(out / RUN, run)
    return run


def run_stages(params_file: Path, sets: list[str]) -> None:
    """The run itself, in the current folder (a run's): the sweep's stages, then the rounds of
    sweep.rounds; what each round scored is kept in rounds/<round>/ and listed in rounds.json."""
    params = load_params(params_file, sets)
    for stage in stages.sweep_stages():
        print(f"{stage.name}: {stages.function(stage.name)(params)}", flush=True)
    rounds = [keep_round(0)]
    if params.sweep.rounds:
        labeled = load_params(params_file, [*sets, f"split.labeled_csv={LABELS}"])
        rounds += [label_round(labeled, r) for r in range(1, params.sweep.rounds + 1)]
    write_json(ROUNDS, rounds)


def keep_round(number: int) -> dict[str, Any]:
    """Copy what round `number` scored (metrics/) to rounds/<number>/; say how many labels
    it had."""
    split = pd.read_parquet(layout.SPLIT)
    folder = Path("rounds") / str(number)
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(layout.METRICS, folder / layout.METRICS)
    return {
        "round": number,
        "labeled": int((split["role"] == "labeled").sum()),
        "folder": str(folder),
    }


def label_round(params: Params, number: int) -> dict[str, Any]:
    """One simulated round of the loop suggest -> label -> retrain: suggest.count images chosen
    by suggest.strategy on the last model, labeled with the dataset's own (hidden) labels as a
    person would on the labelling page, then the stages from split on again."""
    print(f"round {number}: suggest: {stages.function('suggest')(params)}", flush=True)
    chosen = read_csv(layout.SUGGEST / layout.TO_LABEL)["path"]
    index = pd.read_parquet(
        layout.packed_dir(params.data.name) / INDEX, columns=["path", "class_name"]
    )
    answer_with_known_labels(chosen, index.set_index("path")["class_name"], LABELS)
    for stage in stages.sweep_stages(after="split"):
        print(f"round {number}: {stage.name}: {stages.function(stage.name)(params)}", flush=True)
    return keep_round(number)


def aggregate(params_file: Path, sets: list[str], run_files: list[Path], out: Path) -> pd.DataFrame:
    """results/summary.csv (one row per run), comparisons.csv (the paired differences),
    summary.md (both as tables to paste) and the figures (PNG and SVG: the budget curve, and
    per budget the methods with error bars), from the runs' outputs."""
    # here, not at the top: a run's own process needs none of it (matplotlib, scipy)
    from s5cl.evaluation.sweep_summary import (
        collect,
        comparisons,
        markdown,
        plot,
        plot_by_budget,
    )

    params = load_params(params_file, sets)
    table, right = collect(run_files, params.sweep.variant_names())
    metric = params.sweep.metric
    compared = comparisons(table, right, metric)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "summary.csv") as tmp:
        write_csv(table, tmp)
    with atomic_path(out / "comparisons.csv") as tmp:
        write_csv(compared, tmp)
    metrics = tuple(
        dict.fromkeys(
            (metric, "accuracy", "macro_f1", "weighted_f1", "knn_accuracy", "precision_at_k")
        )
    )
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(markdown(table, compared, metric, metrics, list(params.sweep.methods)))
    plot(table, metric, list(params.sweep.methods), out / "budget_curve", params.sweep.reference)
    plot_by_budget(table, metric, list(params.sweep.methods), out / "by_budget")
    return table


def sweep_command(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m s5cl.pipeline.sweep", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("run", help="one pipeline run in its own folder")
    one.add_argument("--variant", default="base", help="a name in sweep.variants")
    one.add_argument("--method", required=True)
    one.add_argument("--budget", type=float, required=True)
    one.add_argument("--seed", type=int, required=True)
    one.add_argument("--out", type=Path, required=True)
    commands.add_parser("stages", help="(run's part) the stages and rounds, in the current folder")
    agg = commands.add_parser("aggregate", help="summary tables and figures")
    agg.add_argument("--out", type=Path, required=True)
    agg.add_argument("runs", type=Path, nargs="+", help="the runs' run.json files")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            run_one(
                args.params.resolve(),
                args.sets,
                args.variant,
                args.method,
                args.budget,
                args.seed,
                args.out,
            )
        elif args.command == "stages":
            run_stages(args.params, args.sets)
        else:
            table = aggregate(args.params, args.sets, args.runs, args.out)
            print(f"aggregate: {len(table)} runs -> {args.out}/ {', '.join(layout.SWEEP_FILES)}")
    except UserError as error:
        print(f"sweep: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    sweep_command()
