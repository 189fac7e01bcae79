"""The whole pipeline, for real, in a temp copy of the project with a tiny config."""

import json
import re

import pandas as pd
import torch

from .conftest import PBC, TINY, needs_shared, run, write_params

STAGES = ["download", "prepare", "split", "warmup", "s5cl", "pseudolabel", "retrain", "evaluate"]
MODELS = ("warmup", "s5cl", "final")


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


def _check_outputs(project):
    scores = json.loads((project / "metrics/evaluate.json").read_text())
    assert set(scores) == set(MODELS)
    for model in MODELS:
        assert 0 <= scores[model]["accuracy"] <= 1
        assert {"balanced_accuracy", "macro_f1", "weighted_f1", "per_class_f1"} <= set(
            scores[model]
        )
        assert (project / f"plots/confusion_{model}.png").stat().st_size > 1000
    split = pd.read_parquet(project / "data/splits/split.parquet")
    pseudo = pd.read_parquet(project / "data/pseudo/pseudo.parquet")
    assert sorted(pseudo["index"]) == sorted(split.loc[split["role"] == "unlabeled", "index"])
    assert "coverage" in json.loads((project / "metrics/pseudolabel.json").read_text())
    return scores


def test_dvc_repro_runs_caches_and_reruns_only_what_changed(project):
    write_params(project, TINY)
    first = run(["dvc", "repro"], project)
    assert _ran(first.stdout) == STAGES
    assert "evaluate: warmup acc" in first.stdout  # the one-line stage summaries
    _check_outputs(project)

    second = run(["dvc", "repro"], project)
    assert _ran(second.stdout) == []

    write_params(project, {"s5cl.tau_u": 0.5})
    third = run(["dvc", "repro"], project)
    assert _ran(third.stdout) == ["s5cl", "pseudolabel", "retrain", "evaluate"]

    metrics = run(["dvc", "metrics", "show", "--json"], project)
    assert "evaluate.json" in metrics.stdout

    # A stage that fails (here: its loss turns NaN) loses nothing the earlier stages made.
    earlier = ["data/packed/digits/images.u8", "data/splits/split.parquet", "models/warmup.pt"]
    before = {path: (project / path).read_bytes() for path in earlier}
    cache = sorted(p for p in (project / ".dvc/cache").rglob("*") if p.is_file())
    write_params(project, {"s5cl.lr": 1e20, "checkpoint.every": 1})
    failed = run(["dvc", "repro"], project, check=False)
    assert failed.returncode != 0
    assert "s5cl: error: the loss is nan at step 1" in failed.stderr
    assert {path: (project / path).read_bytes() for path in earlier} == before
    assert sorted(p for p in (project / ".dvc/cache").rglob("*") if p.is_file()) == cache
    assert "warmup" not in run(["dvc", "status"], project).stdout  # still up to date
    assert (project / "checkpoints/s5cl.pt").exists()  # the last good s5cl state


def test_snakemake_runs_the_same_scripts_and_then_has_nothing_to_do(project):
    write_params(project, TINY)
    assert "good condition" in run(["snakemake", "--lint"], project).stderr
    run(["snakemake", "--cores", "2"], project)
    _check_outputs(project)
    assert (project / "logs/s5cl.log").read_text().count("s5cl: 3 steps") == 1
    again = run(["snakemake", "--cores", "2"], project)
    assert "Nothing to be done" in again.stdout + again.stderr

    by_snakemake = (project / "metrics/evaluate.json").read_bytes()
    run(["dvc", "repro", "--force"], project)  # the same scripts and params under DVC
    assert (project / "metrics/evaluate.json").read_bytes() == by_snakemake


@needs_shared()
def test_stage_scripts_on_a_real_folder_dataset(project):
    write_params(project, {**TINY, "data.name": "folder"})
    root = f"data.root={PBC}"
    for stage in STAGES:
        run(["python", f"stages/{stage}.py", "--set", root], project)
    scores = _check_outputs(project)
    assert len(scores["final"]["per_class_f1"]) == 8
    index = pd.read_parquet(project / "data/packed/folder/index.parquet")
    assert len(index) == 8 * 240
    assert index["md5"].str.len().eq(32).all()


def test_a_user_mistake_is_one_line_not_a_traceback(project):
    result = run(
        ["python", "stages/split.py", "--set", "split.labels_per_class=0"], project, check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "split: error: bad parameter: split.labels_per_class = 0: "
        "Input should be greater than or equal to 1"
    ]
    missing = run(["python", "stages/prepare.py"], project, check=False)
    assert missing.returncode == 2
    assert "run the download stage first" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_same_params_and_seed_give_bit_identical_results(project):
    write_params(project, TINY)
    for stage in ("download", "prepare", "split"):
        run(["python", f"stages/{stage}.py"], project)
    split_first = (project / "data/splits/split.parquet").read_bytes()
    runs = []
    for _ in range(2):
        run(["python", "stages/split.py"], project)
        run(["python", "stages/warmup.py"], project)
        checkpoint = torch.load(project / "models/warmup.pt", weights_only=False)
        weights = b"".join(v.numpy().tobytes() for v in checkpoint["model"].values())
        runs.append(((project / "metrics/warmup/metrics.json").read_text(), weights))
    assert runs[0] == runs[1]
    assert (project / "data/splits/split.parquet").read_bytes() == split_first
