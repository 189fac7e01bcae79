"""The comparison sweep under Snakemake, and the presets that configure it."""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from s5cl.params import validate

from .conftest import ROOT, TINY, run

PRESETS = sorted((ROOT / "workflow" / "presets").glob("*.yaml"))


def _overlay(overrides: dict) -> dict:
    tree: dict = {}
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        tree.setdefault(section, {})[key] = value
    return tree


def test_snakemake_sweep_runs_each_method_budget_and_seed_once_then_aggregates(project):
    config = _overlay(TINY) | {
        "sweep": {"methods": ["ce", "mpl"], "budgets": [2], "seeds": [0, 1]},
        "resources": {"rules": {"sweep_run": {"cpus": 1}}},
    }
    (project / "tiny.yaml").write_text(yaml.safe_dump(config))
    sweep = ["snakemake", "--cores", "2", "sweep", "--configfile", "tiny.yaml"]
    run(sweep, project)

    table = pd.read_csv(project / "results/summary.csv")
    assert sorted(zip(table["method"], table["seed"], strict=True)) == [
        ("ce", 0), ("ce", 1), ("mpl", 0), ("mpl", 1),
    ]  # fmt: skip
    assert (table["budget"] == 2).all() and table["accuracy"].between(0, 1).all()
    assert {"macro_f1", "weighted_f1", "knn_accuracy", "precision_at_k"} <= set(table.columns)
    summary = (project / "results/summary.md").read_text()
    assert "| 2 | ce | 2 |" in summary and "| 2 | mpl | 2 |" in summary
    assert (project / "results/budget_curve.png").stat().st_size > 10_000
    assert "Warning" not in (project / "logs/sweep/aggregate.log").read_text()  # pandas' too
    for method, seed in (("ce", 0), ("mpl", 1)):
        folder = project / f"results/sweep/{method}/2/{seed}"
        assert (folder / "models/final.pt").exists()
        assert (project / f"logs/sweep/{method}/2/{seed}.log").read_text().count("evaluate:") == 1
    again = run(sweep, project)
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_presets_are_valid_params_over_params_yaml(preset: Path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in yaml.safe_load(preset.read_text()).items():
        params[section] = {**params[section], **values} if isinstance(values, dict) else values
    checked = validate(params)
    assert checked.sweep.methods == ["ce", "supcon", "fixmatch", "mpl", "s5cl"]
    assert checked.augment.flip_rotate
    assert checked.resources.of("sweep_run").gpus == 1  # one GPU per run on a cluster
