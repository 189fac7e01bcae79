"""`report/index.html`: one self-contained page (figures embedded as PNG) with what a user
judges a run by: params, scores, confusions, the embedding map, the pseudo-labels, the curves."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml
from sklearn.manifold import TSNE

from s5cl.errors import UserError
from s5cl.labelling.pseudo_labels import pseudo_line

SCORES = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "knn_accuracy")
PHASES = ("warmup", "s5cl", "retrain")


def embedding_map(
    embeddings: np.ndarray,
    labels: np.ndarray,
    is_labeled: np.ndarray,
    class_names: list[str],
    seed: int,
) -> plt.Figure:
    """t-SNE of the embeddings (N x D), coloured by class; labeled images as black-edged stars."""
    perplexity = float(min(30, max(2, (len(embeddings) - 1) // 3)))
    xy = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(embeddings)
    fig, ax = plt.subplots(figsize=(7, 6))
    colours = plt.get_cmap("tab20" if len(class_names) > 10 else "tab10")
    for c, name in enumerate(class_names):
        test = (labels == c) & ~is_labeled
        ax.scatter(*xy[test].T, s=9, color=colours(c % colours.N), label=name, alpha=0.75)
        ax.scatter(
            *xy[(labels == c) & is_labeled].T,
            s=120,
            marker="*",
            color=colours(c % colours.N),
            edgecolors="black",
            linewidths=0.8,
        )
    ax.scatter([], [], s=120, marker="*", color="white", edgecolors="black", label="labeled")
    ax.set(xticks=[], yticks=[], title="Final model's embedding (t-SNE): test images + labeled ★")
    ax.legend(fontsize=7, markerscale=1.5, loc="center left", bbox_to_anchor=(1, 0.5))
    return fig


def pseudo_label_curve(
    pseudo: pd.DataFrame, threshold: float, class_names: list[str]
) -> plt.Figure:
    """Left: the share of pseudo-labels kept at each confidence threshold, and their accuracy
    where the dataset holds a hidden label (a simulation; real unlabeled images have none).
    Right: how many of each class were kept at pseudolabel.threshold."""
    thresholds = np.linspace(0, 0.995, 200)
    confidence = pseudo["confidence"].to_numpy()
    known = (pseudo["true_label"] >= 0).to_numpy()
    right = (pseudo["label"] == pseudo["true_label"]).to_numpy()
    coverage = [(confidence >= t).mean() for t in thresholds]
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(10, 3.6), width_ratios=(3, 2))
    if known.any():
        kept = [known & (confidence >= t) for t in thresholds]
        accuracy = [right[k].mean() if k.any() else np.nan for k in kept]
        ax.plot(thresholds, accuracy, label=f"accuracy of kept ({known.sum()} hidden labels)")
    ax.plot(thresholds, coverage, label="share kept", linestyle="--")
    ax.axvline(threshold, color="grey", linewidth=0.8)
    ax.text(threshold, 0.02, f" pseudolabel.threshold={threshold}", fontsize=8, color="grey")
    ax.set(xlabel="confidence threshold", ylim=(0, 1.02), title="Pseudo-labels vs. threshold")
    ax.legend(loc="lower left", fontsize=8)
    kept_labels = pseudo.loc[confidence >= threshold, "label"].to_numpy()
    counts = np.bincount(kept_labels, minlength=len(class_names))
    bars.barh(np.arange(len(class_names)), counts, color="tab:blue")
    bars.set_yticks(np.arange(len(class_names)), class_names, fontsize=7)
    bars.invert_yaxis()
    bars.set(xlabel="pseudo-labels kept", title=f"Kept per class ({len(kept_labels)})")
    fig.tight_layout()
    return fig


def read_curves(metrics_dir: Path) -> pd.DataFrame:
    """dvclive's per-stage TSVs -> one long table: phase, step (continuing across phases),
    metric, value."""
    frames, offset = [], 0
    for phase in PHASES:
        folder = metrics_dir / phase / "plots" / "metrics"
        files = sorted(folder.rglob("*.tsv")) if folder.is_dir() else []
        if not files:
            continue
        last = 0
        for path in files:
            table = pd.read_csv(path, sep="\t")
            metric = str(path.relative_to(folder).with_suffix(""))
            frames.append(
                pd.DataFrame(
                    {"phase": phase, "step": table["step"] + offset, "metric": metric,
                     "value": table.iloc[:, -1]}
                )
            )  # fmt: skip
            last = max(last, int(table["step"].max()) + 1)
        offset += last
    if not frames:
        raise UserError(f"{metrics_dir}: no training curves; run the training stages first")
    return pd.concat(frames)


def training_curves(curves: pd.DataFrame) -> plt.Figure:
    """Loss and validation accuracy over all phases, one after the other."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 3.6))
    for phase, group in curves.groupby("phase", sort=False):
        loss = group[group["metric"] == "train/loss"]
        loss_ax.plot(loss["step"], loss["value"], linewidth=0.8, label=phase)
        val = group[group["metric"] == "val/acc"]
        acc_ax.plot(val["step"], val["value"], marker="o", label=phase)
    loss_ax.set(xlabel="step (all phases)", title="training loss")
    acc_ax.set(xlabel="step (all phases)", title="validation accuracy", ylim=(0, 1.02))
    for ax in (loss_ax, acc_ax):
        ax.legend(fontsize=8)
    return fig


def _img(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _scores_table(scores: dict[str, dict]) -> str:
    """One row per model; a score with a bootstrap interval shows it under the value."""
    head = "".join(f"<th>{s.replace('_', ' ')}</th>" for s in SCORES)

    def cell(result: dict, score: str) -> str:
        if f"{score}_low" not in result:
            return f"<td>{result[score]:.3f}</td>"
        low, high = result[f"{score}_low"], result[f"{score}_high"]
        return f"<td>{result[score]:.3f}<br><small>[{low:.3f}, {high:.3f}]</small></td>"

    rows = "".join(
        f"<tr><td>{model}</td>" + "".join(cell(result, s) for s in SCORES) + "</tr>"
        for model, result in scores.items()
    )
    return f"<table><tr><th>model</th>{head}</tr>{rows}</table>"


def _comparisons_table(comparisons: dict[str, dict]) -> str:
    """One row per paired comparison: the differences in points with their intervals, and
    McNemar's exact test on the test images where the two models disagree."""
    head = "".join(f"<th>Δ {s.replace('_', ' ')} (points)</th>" for s in ("accuracy", "macro_f1"))
    rows = []
    for name, pair in comparisons.items():
        first, second = name.split("_vs_")
        diffs = "".join(
            f"<td>{100 * pair[f'{s}_diff']:+.1f} [{100 * pair[f'{s}_diff_low']:+.1f}, "
            f"{100 * pair[f'{s}_diff_high']:+.1f}]</td>"
            for s in ("accuracy", "macro_f1")
        )
        rows.append(
            f"<tr><td>{first} − {second}</td>{diffs}<td>{pair['only_first_right']} / "
            f"{pair['only_second_right']}</td><td>{pair['mcnemar_p']:.2g}</td></tr>"
        )
    return (
        f"<table><tr><th>comparison</th>{head}<th>images only the first / only the second got "
        f"right</th><th>McNemar p</th></tr>{''.join(rows)}</table>"
    )


def headline(scores: dict[str, dict]) -> str:
    """What the run shows, as a difference with its interval: the final model against its own
    warm-up, and whether the interval excludes no difference."""
    pair = scores["comparisons"]["final_vs_warmup"]
    diff, low, high = (100 * pair[k] for k in ("accuracy_diff", "accuracy_diff_low",
                                               "accuracy_diff_high"))  # fmt: skip
    level = round(100 * scores["bootstrap"]["level"])
    verdict = (
        "the interval excludes no difference"
        if low > 0 or high < 0
        else "the interval includes no difference: on this test set the gain is not established"
    )
    return (
        f"Final model − warm-up: {diff:+.1f} accuracy points, {level}% CI [{low:+.1f}, "
        f"{high:+.1f}] over {scores['bootstrap']['test_images']} test images, McNemar p = "
        f"{pair['mcnemar_p']:.2g}; {verdict}."
    )


def render(
    title: str,
    params: dict,
    scores: dict[str, dict],
    pseudo_summary: dict,
    figures: dict[str, bytes],
) -> str:
    """The page. `scores`: evaluate.json; `figures`: caption -> PNG bytes, shown in order."""
    models = {name: result for name, result in scores.items() if "accuracy" in result}
    level = round(100 * scores["bootstrap"]["level"])
    pseudo = pseudo_line(pseudo_summary)
    blocks = "".join(f"<figure>{_img(data, caption)}<figcaption>{html.escape(caption)}"
                     "</figcaption></figure>" for caption, data in figures.items())  # fmt: skip
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222 }}
table {{ border-collapse: collapse; margin: 1em 0 }}
td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right }}
td:first-child, th:first-child {{ text-align: left }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top }}
figure img {{ max-width: 100% }} figcaption {{ font-size: 0.9em; color: #555 }}
pre {{ background: #f6f6f6; padding: 1em; font-size: 0.8em; max-height: 24em; overflow: auto }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p><strong>{html.escape(headline(scores))}</strong></p>
<h2>Test-set scores, with {level}% bootstrap intervals</h2>{_scores_table(models)}
<h2>Paired comparisons on the test images</h2>{_comparisons_table(scores["comparisons"])}
<p>Pseudo-labels: {html.escape(pseudo)}</p>
<h2>Figures</h2>{blocks}
<h2>Params</h2><pre>{html.escape(yaml.safe_dump(params, sort_keys=False))}</pre>
</body></html>
"""
