"""The comparison sweep under Snakemake, and the presets that configure it."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from s5cl.config.params import validate
from s5cl.errors import UserError
from s5cl.pipeline import stages

from .conftest import ROOT, TINY, run

PRESETS = sorted((ROOT / "workflow" / "presets").glob("*.yaml"))


def _overlay(overrides: dict) -> dict:
    tree: dict = {}
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        tree.setdefault(section, {})[key] = value
    return tree


@pytest.mark.slow(85)
def test_snakemake_sweep_runs_each_variant_method_budget_and_seed_once_then_compares(project):
    config = _overlay(TINY) | {
        "sweep": {
            "variants": {"base": {}, "longer": {"retrain.steps": 5, "methods": ["mpl"]}},
            "methods": ["ce", "mpl"],
            "budgets": [2],
            "seeds": [0, 1],
        },
        "resources": {"rules": {"sweep_run": {"cpus": 1}}},
    }
    (project / "tiny.yaml").write_text(yaml.safe_dump(config))
    sweep = ["snakemake", "--cores", "2", "sweep", "--configfile", "tiny.yaml"]
    run(sweep, project)

    table = pd.read_csv(project / "results/summary.csv")
    assert sorted(zip(table["variant"], table["method"], table["seed"], strict=True)) == [
        ("base", "ce", 0), ("base", "ce", 1), ("base", "mpl", 0), ("base", "mpl", 1),
        ("longer", "mpl", 0), ("longer", "mpl", 1),
    ]  # fmt: skip
    assert (table["budget"] == 2).all() and table["accuracy"].between(0, 1).all()
    assert {"macro_f1", "weighted_f1", "knn_accuracy", "precision_at_k"} <= set(table.columns)
    assert {"val_accuracy", "warmup_val_accuracy", "s5cl_phase_val_macro_f1"} <= set(table)
    for variant, retrain_steps in (("base", 3), ("longer", 5)):
        folder = project / f"results/sweep/{variant}/mpl/2/1"
        trained = torch.load(folder / "models/final.pt", weights_only=False)["params"]
        assert trained["retrain"]["steps"] == retrain_steps  # the variant's setting ran
    _check_comparisons(project, table)

    summary = (project / "results/summary.md").read_text()
    assert "| base | 2 | ce | 2 |" in summary and "| longer | 2 | mpl | 2 |" in summary
    assert "with 2 seeds, no distribution-free test over seeds can reach p < 0.05" in summary
    for name in ("budget_curve", "by_budget"):  # each figure as PNG and SVG, for a paper
        assert (project / f"results/{name}.png").stat().st_size > 10_000
        assert "<svg" in (project / f"results/{name}.svg").read_text()
    assert "Warning" not in (project / "logs/sweep/aggregate.log").read_text()  # pandas' too
    for variant, method, seed in (("base", "ce", 0), ("longer", "mpl", 1)):
        assert (project / f"results/sweep/{variant}/{method}/2/{seed}/models/final.pt").exists()
        log = project / f"logs/sweep/{variant}/{method}/2/{seed}.log"
        assert log.read_text().count("evaluate:") == 1
    said = (project / "logs/sweep/base/ce/2/0.log").read_text()
    assert "pseudolabel: diagnostic only (ce's retrain does not use them): kept" in said
    again = run(sweep, project)
    assert "Nothing to be done" in again.stdout + again.stderr


def _check_comparisons(project: Path, table: pd.DataFrame) -> None:
    """comparisons.csv against the runs' own outputs: the seed-by-seed differences from
    summary.csv, the pooled McNemar counts from each run's predictions.csv."""
    compared = pd.read_csv(project / "results/comparisons.csv")
    pairs = set(zip(compared["variant"], compared["method"], compared["against"], strict=True))
    assert pairs == {
        ("base", "ce", "own warm-up"), ("base", "mpl", "ce"), ("base", "mpl", "own warm-up"),
        ("longer", "mpl", "ce (base)"), ("longer", "mpl", "mpl (base)"),
        ("longer", "mpl", "own warm-up"),
    }  # fmt: skip
    cell = table.set_index(["variant", "method", "seed"])
    row = compared.set_index(["variant", "method", "against"]).loc[("longer", "mpl", "ce (base)")]
    diffs = [cell.loc[("longer", "mpl", s), "accuracy"] - cell.loc[("base", "ce", s), "accuracy"]
             for s in (0, 1)]  # fmt: skip
    assert row["test_n"] == 2 and row["test_diff"] == pytest.approx(np.mean(diffs))
    assert row["test_sign_flip_p"] >= 0.5  # two seeds: 2/2^2 is the smallest it can be
    b = c = 0
    for seed in (0, 1):
        runs = project / "results/sweep"
        mpl = pd.read_csv(runs / f"longer/mpl/2/{seed}/metrics/predictions.csv")
        ce = pd.read_csv(runs / f"base/ce/2/{seed}/metrics/predictions.csv")
        assert (mpl["image"] == ce["image"]).all()  # the same seed: the same test images
        mpl_right, ce_right = mpl["final"] == mpl["actual"], ce["final"] == ce["actual"]
        b += (mpl_right & ~ce_right).sum()
        c += (~mpl_right & ce_right).sum()
    assert (row["pooled_only_first_right"], row["pooled_only_second_right"]) == (b, c)
    own = compared.set_index(["variant", "method", "against"]).loc[("base", "ce", "own warm-up")]
    gain = cell.loc[("base", "ce"), "accuracy"] - cell.loc[("base", "ce"), "warmup_accuracy"]
    assert own["test_diff"] == pytest.approx(gain.mean())
    val_gain = (
        cell.loc[("base", "ce"), "val_accuracy"] - cell.loc[("base", "ce"), "warmup_val_accuracy"]
    )
    assert own["val_diff"] == pytest.approx(val_gain.mean())


def test_a_variant_that_changes_the_dataset_or_the_sweep_is_refused():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for bad, message in (
        ({"x": {"data.size": 64}}, "share one packed dataset"),
        ({"x": {"sweep.seeds": [1]}}, "give section.key"),
        ({"x": {"tau_u": 0.5}}, "give section.key"),
        ({"x": {"methods": ["sgd"]}}, "not methods"),
    ):
        with pytest.raises(UserError, match=message):
            validate(params | {"sweep": params["sweep"] | {"variants": bad}})


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_presets_are_valid_params_over_params_yaml(preset: Path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in yaml.safe_load(preset.read_text()).items():
        params[section] = {**params[section], **values} if isinstance(values, dict) else values
    checked = validate(params)
    assert checked.sweep.methods == ["ce", "supcon", "fixmatch", "mpl", "s5cl"]
    assert checked.augment.flip_rotate
    assert stages.rule_resources(checked, "sweep_run").gpus == 1  # one GPU per run on a cluster


@pytest.mark.parametrize(
    "preset", sorted((ROOT / "workflow/presets/labelling").glob("*.yaml")), ids=lambda p: p.stem
)
def test_labelling_presets_are_valid_params_over_params_yaml(preset: Path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in yaml.safe_load(preset.read_text()).items():
        params[section] = {**params[section], **values}
    checked = validate(params)
    assert checked.sweep.methods == ["s5cl"] and checked.sweep.seeds == [0, 1, 2]
    assert f"--configfile workflow/presets/labelling/{preset.name}" in preset.read_text()


@pytest.mark.slow(35)
def test_a_cold_start_selection_then_a_simulated_round_of_suggest(project):
    """sweep.selections and sweep.rounds, through `python -m s5cl.pipeline.sweep run`: the labeled
    images
    chosen by k-center on the coldstart embedding, then suggest.count more chosen by margin and
    answered by the dataset's labels, retrained and scored at the larger budget."""
    config = _overlay(TINY) | {
        "coldstart": {"steps": 2},
        "suggest": {"strategy": "margin", "count": 10},
        "sweep": {"methods": ["s5cl"], "selections": ["random", "kcenter"], "rounds": 1},
    }
    run(["python", "stages/download.py"], project)
    run(["python", "stages/prepare.py"], project)
    sets = []
    for section, values in config.items():
        sets += [f"--set={section}.{key}={json.dumps(v)}" for key, v in values.items()]
    out = project / "results/sweep/kcenter/s5cl/1/0"
    cmd = [
        "python",
        "-m",
        "s5cl.pipeline.sweep",
        *sets,
        "run",
        "--variant",
        "kcenter",
        "--method",
        "s5cl",
    ]
    said = run([*cmd, "--budget", "1", "--seed", "0", "--out", str(out)], project).stdout
    assert "labeled chosen by kcenter" in said and "round 1: suggest: 10 of" in said

    labels = pd.read_csv(out / "labels/labels.csv")
    index = pd.read_parquet(project / "data/packed/digits/index.parquet").set_index("path")
    truth = index.loc[labels["path"], "class_name"].to_numpy()
    assert len(labels) == 10 and (labels["label"].astype(str) == truth).all()  # the oracle's
    split = pd.read_parquet(out / "data/splits/split.parquet")
    assert (split["role"] == "labeled").sum() == 20  # 10 classes x 1, then 10 more
    rows = index.index.get_indexer(labels["path"])
    assert set(rows) <= set(split.index[split["role"] == "labeled"])
    run_json = json.loads((out / "run.json").read_text())
    assert [(r["round"], r["labeled"]) for r in run_json["rounds"]] == [(0, 10), (1, 20)]

    aggregated = run(["python", "-m", "s5cl.pipeline.sweep", *sets, "aggregate", "--out", "results",
                      str(out / "run.json")], project)  # fmt: skip
    table = pd.read_csv(project / "results/summary.csv")
    assert list(zip(table["variant"], table["budget"], table["round"], strict=True)) == [
        ("kcenter", 1, 0),
        ("kcenter", 2, 1),
    ]
    first = json.loads((out / "rounds/0/metrics/evaluate.json").read_text())
    assert table["accuracy"][0] == first["final"]["accuracy"]
    assert "aggregate: 2 runs" in aggregated.stdout
