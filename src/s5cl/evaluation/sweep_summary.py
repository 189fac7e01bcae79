"""A sweep's runs as tables and figures: scores per variant, budget and method over seeds,
paired differences (sign-flip, t, pooled McNemar: s5cl.evaluation.stats), and the budget
curves. It reads each run's metrics/evaluate.json and metrics/predictions.csv."""

from __future__ import annotations

import typing
from pathlib import Path

import numpy as np
import pandas as pd

from s5cl import layout
from s5cl.config.params import Metric
from s5cl.config.phases import EVALUATED
from s5cl.errors import UserError
from s5cl.evaluation.stats import (
    mcnemar_exact,
    mean_interval,
    paired_over_seeds,
    smallest_sign_flip_p,
)
from s5cl.figures import plt, save_figure
from s5cl.io import read_csv, read_input, read_json

SCALARS = typing.get_args(Metric)  # every scalar evaluate.json has per model


def budget_label(kind: str, value: float) -> str:
    """5 labels per class -> '5'; a fraction 0.001 -> '0.1%'."""
    return f"{value:g}" if kind == "labels_per_class" else f"{value * 100:g}%"


def column_prefix(model: str) -> str:
    """The final model's scores are the table's plain columns; the phases' are prefixed
    (warmup_, and s5cl_phase_: s5cl is a method's name too)."""
    if model == layout.model_path("retrain").stem:
        return ""
    return f"{model}_phase_" if model == "s5cl" else f"{model}_"


# (model, column prefix): the final model first
MODELS = tuple((model, column_prefix(model)) for model in reversed(EVALUATED))
KEYS = ["variant", "budget", "method"]  # one cell of the table; its rows are the seeds
BASELINES = ("ce", "supcon")  # every method is compared with these, seed by seed


def collect(
    run_files: list[Path], variants: list[str] | None = None
) -> tuple[pd.DataFrame, dict[tuple, pd.DataFrame]]:
    """One row per run: what identifies it, then every scalar metric of each evaluated model
    (the final model's without a prefix, the warm-up's and s5cl phase's prefixed; val-set
    scores as val_<score>). And per run (variant, budget, method, seed), which test images
    each model got right (metrics/predictions.csv), for the pooled McNemar tests. Rows are in
    the order of `variants` (sweep.variants: the first is the baseline), then budget, method
    and seed."""
    rows, right = [], {}
    scored = []  # (run, its folder of metrics/, round, budget)
    for run_file in run_files:
        run = read_json(run_file)
        rounds = run.get("rounds") or [{"round": 0, "folder": "."}]
        first = rounds[0].get("labeled")
        for one in rounds:
            # after a round: the budget grown as the labeled set did (labels per class, or
            # the fraction of the pool)
            budget = run["budget"] * one["labeled"] / first if one["round"] else run["budget"]
            scored.append((run, run_file.parent / one["folder"], one["round"], budget))
    for run, folder, number, budget in scored:
        scores = read_json(folder / layout.METRICS / "evaluate.json")
        row = {"variant": run.get("variant", "base")}
        row |= {k: run[k] for k in ("dataset", "method", "budget_kind", "seed")}
        row |= {"budget": round(budget, 6), "round": number}
        for model, prefix in MODELS:
            row |= {f"{prefix}{key}": scores[model][key] for key in SCALARS}
            row |= {f"{prefix}val_{k}": v for k, v in scores[model].get("val", {}).items()}
        rows.append(row)
        predictions = read_input(folder / layout.METRICS / "predictions.csv", read_csv, "table")
        key = (row["variant"], row["budget"], row["method"], row["seed"])
        if key in right:
            raise UserError(
                f"two runs score {row['method']} of {row['variant']} at budget {row['budget']:g}, "
                f"seed {row['seed']} (a round of sweep.rounds reaches another run's budget?); "
                "drop one budget or round"
            )
        right[key] = pd.DataFrame(
            {m: predictions[m] == predictions["actual"] for m, _ in MODELS}
        ).set_index(predictions["image"])
    if not rows:
        raise UserError("no runs to aggregate")
    table = pd.DataFrame(rows)
    order = list(dict.fromkeys([*(variants or []), *table["variant"]]))
    rank = {name: i for i, name in enumerate(order)}
    table = table.sort_values(
        [*KEYS, "seed"], key=lambda c: c.map(rank) if c.name == "variant" else c
    )
    return table.reset_index(drop=True), right


def summarise(table: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
    """mean, std and the t interval of the mean over seeds, per variant, budget and method;
    the interval clipped to [0, 1], where every score lies."""
    grouped = table.groupby(KEYS, sort=True)
    summary = grouped[list(metrics)].agg(["mean", "std"])
    for metric in metrics:
        bounds = grouped[metric].apply(lambda v: mean_interval(v.to_numpy()))
        low, high = np.clip(np.array(list(bounds), dtype=float).T, 0, 1)  # nan stays nan
        summary[(metric, "low")], summary[(metric, "high")] = low, high
    summary[("runs", "count")] = grouped.size()  # a full key: the columns are a MultiIndex
    return summary


def _pooled_mcnemar(right: dict, first: tuple, second: tuple, seeds: list[int]) -> dict:
    """McNemar over the test images of all seeds at once, first's model vs second's: each key
    is (variant, budget, method, model), the seed added per run; images matched by index."""
    a_right, b_right = [], []
    for seed in seeds:
        a = right[(*first[:3], seed)][first[3]]
        b = right[(*second[:3], seed)][second[3]]
        common = a.index.intersection(b.index)
        a_right.append(a.loc[common].to_numpy())
        b_right.append(b.loc[common].to_numpy())
    return mcnemar_exact(np.concatenate(a_right), np.concatenate(b_right))


def comparisons(table: pd.DataFrame, right: dict, metric: str) -> pd.DataFrame:
    """Paired over the seeds two runs share (their splits are the same): every method against
    ce and supcon of its variant (of the first variant where its own has none), every variant
    against the first with the same method, and every run's final model against its own
    warm-up. Per pair: the mean difference of `metric` on test and val with t intervals, the
    sign-flip and t-test p, and the pooled McNemar on all test images of all seeds."""
    first_variant = table["variant"].iloc[0]  # collect puts the first variant first
    cells = {key: group.set_index("seed") for key, group in table.groupby(KEYS, sort=False)}
    rows = []

    def add(cell, against_cell, label, models=("final", "final")):
        a, b = cells[cell], cells[against_cell]
        seeds = sorted(a.index.intersection(b.index))
        if not seeds:
            return
        prefix = dict(MODELS)
        row = {"variant": cell[0], "budget": cell[1], "method": cell[2], "against": label}
        for split, key in (("test", metric), ("val", f"val_{metric}")):
            ka, kb = f"{prefix[models[0]]}{key}", f"{prefix[models[1]]}{key}"
            if ka not in a or kb not in b or a[ka].isna().any() or b[kb].isna().any():
                continue
            paired = paired_over_seeds(a.loc[seeds, ka].to_numpy(), b.loc[seeds, kb].to_numpy())
            row |= {f"{split}_{k}": v for k, v in paired.items()}
        pooled = _pooled_mcnemar(right, (*cell, models[0]), (*against_cell, models[1]), seeds)
        rows.append(row | {"pooled_" + k: v for k, v in pooled.items()})

    for variant, budget, method in cells:
        for baseline in BASELINES:
            if method == baseline:
                continue
            for where in dict.fromkeys((variant, first_variant)):
                if (where, budget, baseline) in cells:
                    label = baseline if where == variant else f"{baseline} ({where})"
                    add((variant, budget, method), (where, budget, baseline), label)
                    break
        cell = (variant, budget, method)
        if variant != first_variant and (first_variant, budget, method) in cells:
            add(cell, (first_variant, budget, method), f"{method} ({first_variant})")
        add(cell, cell, "own warm-up", ("final", "warmup"))
    return pd.DataFrame(rows)


def _interval(mean: float, low: float, high: float, points: bool = False) -> str:
    """0.714 [0.62, 0.81], or in points +7.3 [−3.0, +17.6]; no interval for one seed."""
    if points:
        cell = f"{100 * mean:+.1f}"
        return cell if np.isnan(low) else f"{cell} [{100 * low:+.1f}, {100 * high:+.1f}]"
    return f"{mean:.3f}" if np.isnan(low) else f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _p(value: float) -> str:
    return "–" if np.isnan(value) else f"{value:.2g}"


def markdown(
    table: pd.DataFrame,
    compared: pd.DataFrame,
    metric: str,
    metrics: tuple[str, ...],
    methods: list[str],
) -> str:
    """The scores per variant, budget and method (mean ± std over seeds, and the 95% interval
    of the mean of `metric`), then the paired differences, with what is significant marked."""
    kind = table["budget_kind"].iloc[0]
    val_metric = f"val_{metric}"
    shown = (*metrics, val_metric) if val_metric in table else metrics
    summary = summarise(table, shown)
    budget_head = "labels" if kind == "labels_per_class" else "label fraction"
    others = [m for m in shown if m != metric]
    head = ["variant", budget_head, "method", "runs", f"{metric} [95% CI of the mean]", *others]
    lines = [
        f"## Test scores: mean ± std over seeds ({table['dataset'].iloc[0]})",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    variants = list(dict.fromkeys(table["variant"]))
    order = {m: i for i, m in enumerate(methods)}
    for variant, budget, method in sorted(
        summary.index, key=lambda k: (k[1], variants.index(k[0]), order.get(k[2], len(order)))
    ):
        row = summary.loc[(variant, budget, method)]
        main = _interval(row[(metric, "mean")], row[(metric, "low")], row[(metric, "high")])
        cells = [f"{row[(m, 'mean')]:.3f} ± {np.nan_to_num(row[(m, 'std')]):.3f}" for m in others]
        label, runs = budget_label(kind, budget), int(row[("runs", "count")])
        lines.append(f"| {variant} | {label} | {method} | {runs} | {main} | {' | '.join(cells)} |")
    seeds = int(table.groupby(KEYS).size().min())
    lines += [
        "",
        f"## Paired differences in {metric} (points), seed by seed",
        "",
        "Δ is the mean over the seeds both share of (row − against), with Student's t 95% "
        "interval; sign-flip is the exact permutation test over seeds, t the paired t-test, "
        "McNemar the exact test pooled over every test image of every seed (b: only the row's "
        "model right, c: only the other's). *significant* lists the tests with p < 0.05.",
    ]
    if seeds < 6:
        lines += [
            "",
            f"**Note:** with {seeds} seed{'s' if seeds > 1 else ''}, no distribution-free test "
            "over seeds can reach p < 0.05 (the sign-flip test's smallest p is 2/2^n = "
            f"{smallest_sign_flip_p(seeds):.2g}); the t-test's p assumes normal differences, "
            "and the pooled McNemar treats the seeds' test images as one sample.",
        ]
    head = [
        "variant",
        "labels",
        "method",
        "against",
        "seeds",
        "Δ test",
        "sign-flip p",
        "t p",
        "McNemar b/c, p",
        "Δ val",
        "significant",
    ]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, c in compared.iterrows():
        marks = [
            name
            for name, key in (
                ("McNemar", "pooled_mcnemar_p"),
                ("t", "test_t_p"),
                ("sign-flip", "test_sign_flip_p"),
            )
            if c.get(key, np.nan) < 0.05
        ]
        val = (
            _interval(c["val_diff"], c["val_diff_low"], c["val_diff_high"], points=True)
            if "val_diff" in c and not np.isnan(c["val_diff"])
            else "–"
        )
        lines.append(
            f"| {c['variant']} | {budget_label(kind, c['budget'])} | {c['method']} | "
            f"{c['against']} | {int(c['test_n'])} | "
            f"{_interval(c['test_diff'], c['test_diff_low'], c['test_diff_high'], points=True)} | "
            f"{_p(c['test_sign_flip_p'])} | {_p(c['test_t_p'])} | "
            f"{c['pooled_only_first_right']}/{c['pooled_only_second_right']}, "
            f"{_p(c['pooled_mcnemar_p'])} | {val} | {', '.join(marks) or 'no'} |"
        )
    return "\n".join(lines) + "\n"


def plot(
    table: pd.DataFrame,
    metric: str,
    methods: list[str],
    stem: Path,
    reference: dict[str, dict[float, float]] | None = None,
) -> None:
    """`metric` against the label budget: one line per method (and variant), the band its 95%
    interval of the mean over seeds; published reference figures, if given, dashed."""
    kind = table["budget_kind"].iloc[0]
    summary = summarise(table, (metric,))
    variants = list(dict.fromkeys(table["variant"]))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = dict(zip(methods, palette, strict=False))
    styles = dict(zip(variants, ["-", "--", ":", "-."] * 8, strict=False))
    one_method = table["method"].nunique() == 1  # then a colour per variant (e.g. selection)
    by_variant = dict(zip(variants, palette * 4, strict=False))
    for (variant, method), rows in summary.groupby(level=["variant", "method"], sort=False):
        rows = rows.droplevel(["variant", "method"]).sort_index()
        label = method if len(variants) == 1 else f"{method} ({variant})"
        colour = by_variant[variant] if one_method else colours.get(method)
        ax.plot(
            rows.index,
            rows[(metric, "mean")],
            marker="o",
            label=label,
            color=colour,
            linestyle=styles[variant],
        )
        if rows[(metric, "low")].notna().any():
            ax.fill_between(
                rows.index,
                rows[(metric, "low")],
                rows[(metric, "high")],
                color=colour,
                alpha=0.1,
                linewidth=0,
            )
    for method, points in (reference or {}).items():
        points = sorted(points.items())
        ax.plot(
            [b for b, _ in points],
            [v for _, v in points],
            linestyle="--",
            marker="x",
            color=colours.get(method),
            alpha=0.6,
            label=f"{method} (paper)",
        )
    budgets = sorted(table["budget"].unique())
    if kind == "label_fraction" or (len(budgets) > 2 and budgets[-1] / budgets[0] > 20):
        ax.set_xscale("log")
    ax.set_xticks(budgets, [budget_label(kind, b) for b in budgets])
    ax.set_xlabel("labels per class" if kind == "labels_per_class" else "labeled fraction")
    ax.set_ylabel(f"test {metric.replace('_', ' ')}")
    seeds = int(table.groupby(KEYS).size().min())
    ax.set_title(f"{table['dataset'].iloc[0]}: mean over {seeds} seeds, band: 95% CI of the mean")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    save_figure(fig, stem)


def plot_by_budget(table: pd.DataFrame, metric: str, methods: list[str], stem: Path) -> None:
    """One panel per budget: each method's (and variant's) mean `metric` over seeds with its
    95% interval of the mean as an error bar, every seed's score as a dot beside it."""
    kind = table["budget_kind"].iloc[0]
    summary = summarise(table, (metric,))
    budgets = sorted(table["budget"].unique())
    order = {m: i for i, m in enumerate(methods)}
    shown = sorted(
        {(v, m) for v, _, m in summary.index},
        key=lambda k: (list(dict.fromkeys(table["variant"])).index(k[0]), order.get(k[1], 99)),
    )
    variants = table["variant"].nunique() > 1
    labels = [f"{m} ({v})" if variants else m for v, m in shown]
    fig, axes = plt.subplots(
        1,
        len(budgets),
        figsize=(1.2 + 0.9 * len(shown) * len(budgets), 3.8),
        sharey=True,
        squeeze=False,
    )
    for ax, budget in zip(axes[0], budgets, strict=True):
        for x, (variant, method) in enumerate(shown):
            if (variant, budget, method) not in summary.index:
                continue
            row = summary.loc[(variant, budget, method)]
            mean, low, high = (row[(metric, k)] for k in ("mean", "low", "high"))
            error = [[mean - low], [high - mean]] if not np.isnan(low) else None
            ax.errorbar(x, mean, yerr=error, fmt="o", capsize=4, color="black")
            runs = table[
                (table["variant"] == variant)
                & (table["budget"] == budget)
                & (table["method"] == method)
            ][metric]
            ax.scatter(np.full(len(runs), x + 0.18), runs, s=10, color="tab:blue", alpha=0.6)
        ax.set_xticks(range(len(shown)), labels, rotation=45, ha="right")
        ax.set_title(budget_label(kind, budget) + (" labels" if kind == "labels_per_class" else ""))
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"test {metric.replace('_', ' ')}")
    seeds = int(table.groupby(KEYS).size().min())
    fig.suptitle(f"{table['dataset'].iloc[0]}: mean and 95% CI over {seeds} seeds; dots: seeds")
    save_figure(fig, stem)
