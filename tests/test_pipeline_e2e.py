"""The whole pipeline, for real, in a temp copy of the project with a tiny config."""

import base64
import io
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from s5cl.pipeline import stages

from .conftest import (
    PBC,
    ROOT,
    TINY,
    VENV_BIN,
    copy_project,
    needs_shared,
    run,
    write_params,
)
from .kills import leftovers, results

STAGES = ["download", "prepare", "features", "coldstart", "split", "warmup", "s5cl"]
STAGES += ["pseudolabel", "retrain", "evaluate", "report", "suggest"]
MODELS = ("warmup", "s5cl", "final")


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


def _check_outputs(project):
    scores = json.loads((project / "metrics/evaluate.json").read_text())
    assert set(scores) == {*MODELS, "comparisons", "bootstrap"}
    for model in MODELS:
        assert 0 <= scores[model]["accuracy"] <= 1
        assert {"balanced_accuracy", "macro_f1", "weighted_f1", "per_class_f1"} <= set(
            scores[model]
        )
        for score in ("accuracy", "balanced_accuracy", "macro_f1"):
            low, high = scores[model][f"{score}_low"], scores[model][f"{score}_high"]
            assert low <= scores[model][score] <= high and high - low > 0.01  # not a point
            assert 0 <= scores[model]["val"][score] <= 1
        for kind in ("png", "svg"):  # every figure as PNG and SVG
            assert (project / f"plots/evaluate/confusion_{model}.{kind}").stat().st_size > 1000
    predictions = pd.read_csv(project / "metrics/predictions.csv")
    assert len(predictions) == scores["bootstrap"]["test_images"] > 0
    for first, second in (("final", "warmup"), ("final", "s5cl"), ("s5cl", "warmup")):
        pair = scores["comparisons"][f"{first}_vs_{second}"]
        right = {m: predictions[m] == predictions["actual"] for m in (first, second)}
        assert pair["only_first_right"] == (right[first] & ~right[second]).sum()
        assert pair["accuracy_diff"] == pytest.approx(right[first].mean() - right[second].mean())
        assert pair["accuracy_diff_low"] <= pair["accuracy_diff"] <= pair["accuracy_diff_high"]
        assert 0 < pair["mcnemar_p"] <= 1
    split = pd.read_parquet(project / "data/splits/split.parquet")
    pseudo = pd.read_parquet(project / "data/pseudo/pseudo.parquet")
    assert sorted(pseudo["index"]) == sorted(split.loc[split["role"] == "unlabeled", "index"])
    assert "coverage" in json.loads((project / "metrics/pseudolabel.json").read_text())
    for name in ("training_curves", "embedding_map", "pseudo_labels"):  # the report's figures
        svg = (project / f"plots/report/{name}.svg").read_text()
        assert svg.startswith("<?xml") and "<svg" in svg and "<dc:date>" not in svg
        assert (project / f"plots/report/{name}.png").stat().st_size > 1000
    _check_report(project / "report/index.html")
    _check_suggestions(project, split)
    return scores


def _check_suggestions(project: Path, split: pd.DataFrame) -> None:
    """The suggest stage: suggest.count unlabeled images, best first, with the final model's
    prediction, and their contact sheet (a thumbnail each)."""
    table = pd.read_csv(project / "suggest/to_label.csv")
    assert list(table.columns) == ["rank", "path", "row", "score", "prediction", "confidence"]
    assert list(table["rank"]) == list(range(1, 21)) and table["row"].is_unique
    assert (split.set_index("index").loc[table["row"], "role"] == "unlabeled").all()
    (packed,) = (project / "data/packed").iterdir()  # digits, or the folder dataset
    index = pd.read_parquet(packed / "index.parquet")
    assert list(index["path"][table["row"]]) == list(table["path"])
    assert table["confidence"].between(1 / len(index["label"].unique()), 1).all()  # the top
    sheet = Image.open(project / "suggest/contact_sheet.png")
    assert sheet.size == (8 * 128, 3 * (128 + 18))  # 20 thumbnails, 8 a row


def _check_report(page: Path) -> None:
    """Self-contained: every figure is an embedded PNG that decodes and is not blank."""
    text = page.read_text()
    figures = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(figures) == 7  # curves, embedding map, pseudo-labels, per-class F1, 3 confusions
    for encoded in figures:
        image = Image.open(io.BytesIO(base64.b64decode(encoded)))
        assert image.format == "PNG" and image.width > 300 and image.height > 200
        assert np.asarray(image.convert("L")).std() > 5  # drawn on, not an empty canvas
    assert 'src="http' not in text and "<script" not in text  # nothing fetched when opened
    for heading in ("Test-set scores", "Paired comparisons", "Final model − warm-up: ",
                    "McNemar p", "Pseudo-labels", "Params", "warmup", "final"):  # fmt: skip
        assert heading in text


@dataclass
class Reference:
    project: Path
    first: str  # what the shared run's `dvc repro`s printed, killed ones included
    last: str  # the last one's output, which ran evaluate
    said: str  # its stderr: progress bars, warnings


@pytest.fixture(scope="module")
def reference(tiny_repro, tmp_path_factory) -> Reference:
    """A copy of the shared TINY run (conftest.tiny_repro), for the tests that change it."""
    project = copy_project(tiny_repro, tmp_path_factory.mktemp("reference") / "project")
    return Reference(project, tiny_repro.stdout, tiny_repro.last, tiny_repro.stderr)


def test_dvc_repro_runs_caches_and_reruns_only_what_changed(reference):
    project = reference.project
    assert list(dict.fromkeys(_ran(reference.first))) == STAGES  # every stage, in order
    # the one-line stage summaries; evaluate's gives each model's interval and each pair's test
    assert re.search(
        r"evaluate: test accuracy \(95% CI; 359 test images, final's interval ±\d+\.\d pt\) "
        r"warmup 0\.\d{3} \[0\.\d{3}, [01]\.\d{3}\];.*"
        r"final − warmup [+-]\d+\.\d pt \[[+-]\d+\.\d, [+-]\d+\.\d\], McNemar p = ",
        reference.last,
    )
    assert "No CUDA runtime" not in reference.first + reference.said  # Inductor's: alarming
    _check_outputs(project)
    sizes = {name: (project / f"models/{name}.pt").stat().st_size for name in MODELS}
    assert max(sizes.values()) < 50e6, sizes  # ResNet-18 weights, no optimizer state (134 MB)

    second = run(["dvc", "repro"], project)
    assert _ran(second.stdout) == ["download"]  # it lists the dataset every time; same list

    write_params(project, {"evaluate.knn_k": 3})
    third = run(["dvc", "repro"], project)
    assert _ran(third.stdout) == ["download", "evaluate", "report"]  # and what reads its output

    metrics = run(["dvc", "metrics", "show", "--json"], project)
    assert "evaluate.json" in metrics.stdout
    _check_every_module_edit_is_seen(project)

    # A stage that fails (here: its loss turns NaN) loses nothing the earlier stages made.
    earlier = ["data/packed/digits/images.u8", "data/splits/split.parquet", "models/warmup.pt"]
    before = {path: (project / path).read_bytes() for path in earlier}
    # (outputs in the cache: coldstart reads s5cl.lr, so it reruns and logs a run, same note)
    cache = sorted(p for p in (project / ".dvc/cache/files").rglob("*") if p.is_file())
    write_params(project, {"s5cl.tau_u": 0.5, "s5cl.lr": 1e20, "checkpoint.every": 1})
    failed = run(["dvc", "repro"], project, check=False)
    assert failed.returncode != 0
    # coldstart reruns too (it would train at s5cl's tau_u and lr), but with split.select
    # random it writes the same note, so split and warmup stay cached
    assert _ran(failed.stdout) == ["download", "coldstart", "s5cl"]
    assert "s5cl: error: the loss is nan at step 1" in failed.stderr
    assert {path: (project / path).read_bytes() for path in earlier} == before
    assert sorted(p for p in (project / ".dvc/cache/files").rglob("*") if p.is_file()) == cache
    assert "warmup" not in run(["dvc", "status"], project).stdout  # still up to date
    assert list((project / "checkpoints").glob("s5cl-*.pt"))  # the last good s5cl state


@needs_shared()
def test_predict_flags_blood_cells_as_far_from_a_digits_model(reference, tmp_path):
    """A digits model calls anything a digit, confidently; `s5cl predict` says which images lie
    outside what it was trained on: nearly no held-out digit, every blood cell."""
    from sklearn.datasets import load_digits

    digits, cells = tmp_path / "digits", tmp_path / "cells"
    digits.mkdir(), cells.mkdir()
    split = pd.read_parquet(reference.project / "data/splits/split.parquet")
    for row in split.loc[split["role"] == "test", "index"][:60]:  # never trained on
        image = (load_digits().images[row] * 15).astype(np.uint8)
        Image.fromarray(image).save(digits / f"{row}.png")
    for path in sorted(PBC.rglob("*.jpg"))[::8][:30]:  # every class
        (cells / path.name).write_bytes(path.read_bytes())
    tables = {}
    for folder in (digits, cells):
        ran = run(["s5cl", "predict", "--folder", str(folder), "--out", f"{folder}.csv"],
                  reference.project)  # fmt: skip
        tables[folder.name] = pd.read_csv(f"{folder}.csv")
    assert tables["cells"]["far_from_training"].mean() >= 0.9  # 1909 of 1920 (the default run)
    assert tables["digits"]["far_from_training"].mean() <= 0.1  # 1 of 97
    assert re.search(r"\d+ of 30 images are far from the training data \(far_from_training: "
                     r"distance_to_training above \d+\.\d, farther out than 99% of the 179 val "
                     r"images\); their predicted classes are guesses", ran.stderr)  # fmt: skip
    table = pd.read_csv(reference.project / "metrics/predictions.csv")
    index = pd.read_parquet(reference.project / "data/packed/digits/index.parquet")
    assert list(table["path"]) == list(index["path"][table["image"]])  # the source of each row


def _check_every_module_edit_is_seen(project: Path) -> None:
    """Append a line to every module of the package and every stage script: `dvc status`
    must flag, for each stage, exactly the files its code imports (directly or not, lazy
    imports included), and at least every module a fresh interpreter loads to run it. First
    the training layer alone: the data stages must stay cached (docs/architecture.md)."""
    for path in sorted(project.glob("src/s5cl/training/*.py")):
        path.write_text(path.read_text() + "# edited\n")
    status = json.loads(run(["dvc", "status", "--json"], project).stdout)
    assert status["download"] == ["always changed"]  # listed every run, but its code unchanged
    assert {"prepare", "split"}.isdisjoint(status), status
    assert {"warmup", "s5cl", "retrain"} <= set(status)
    run(["git", "checkout", "-q", "--", "src"], project)
    edited = sorted(project.glob("src/s5cl/**/*.py")) + sorted(project.glob("stages/*.py"))
    for path in edited:
        path.write_text(path.read_text() + "# edited\n")
    status = json.loads(run(["dvc", "status", "--json"], project).stdout)
    run(["git", "checkout", "-q", "--", "src", "stages"], project)
    assert json.loads(run(["dvc", "status", "--json"], project).stdout) == {
        "download": ["always changed"]
    }
    for stage in stages.STAGES:
        flagged = {
            path
            for entry in status.get(stage.name, [])
            if isinstance(entry, dict)
            for path in entry.get("changed deps", {})
        }
        assert flagged == set(stages.code_deps(stage)), stage.name
        assert stage.script in flagged and f"src/{stage.module.replace('.', '/')}.py" in flagged


def _dry_run(project: Path, *args: str) -> list[str]:
    """The rules `snakemake` would run with these arguments, in order."""
    out = run(["snakemake", "-n", "--cores", "2", *args], project).stdout
    return [rule for rule in re.findall(r"^(?:local)?rule (\w+):", out, re.M) if rule != "all"]


# Long enough that every phase has left its first, chaotic steps: after TINY's 3 steps, or with
# every pseudo-label kept, the final models of two thread counts differ by 10-15 points.
SETTLED = TINY | {
    "warmup.steps": 60,
    "warmup.eval_every": 60,
    "s5cl.steps": 30,
    "s5cl.eval_every": 30,
    "retrain.steps": 30,
    "pseudolabel.threshold": 0.9,
}


@pytest.mark.slow(60)
def test_one_and_two_threads_have_overlapping_intervals(reference, tmp_path):
    """Another thread count sums floating-point numbers in another order, so the runs are not
    bit-identical (docs/statistics.md); their 95% intervals must still overlap. (Each score
    inside the other's interval is too strict a test: two runs as alike as two draws differ
    by more than one interval's half-width about one time in six, per score. On a 2-core AMD
    EPYC with AVX-512 the s5cl phase's accuracies were 0.916 and one 0.5 points above the
    other's upper bound.)"""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in SETTLED.items():
        section, key = dotted.split(".")
        params[section][key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    sweep = [
        "python",
        "-m",
        "s5cl.pipeline.sweep",
        "--params",
        str(tmp_path / "params.yaml"),
        "run",
    ]
    sweep += ["--method", "s5cl", "--budget", "5", "--seed", "0", "--out"]
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    runs = {  # side by side: one core each
        threads: subprocess.Popen(
            [*sweep, str(tmp_path / f"threads-{threads}")],
            cwd=reference.project,
            env=env | {"OMP_NUM_THREADS": str(threads)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for threads in (1, 2)
    }
    for threads, process in runs.items():
        output, _ = process.communicate()
        assert process.returncode == 0, f"{threads} threads: {output}"
    scores = {t: json.loads((tmp_path / f"threads-{t}/metrics/evaluate.json").read_text())
              for t in runs}  # fmt: skip
    for model in MODELS:
        one, two = scores[1][model], scores[2][model]
        for score in ("accuracy", "balanced_accuracy", "macro_f1"):
            assert one[f"{score}_low"] <= two[f"{score}_high"], (model, score)
            assert two[f"{score}_low"] <= one[f"{score}_high"], (model, score)
        assert one["accuracy"] > 0.8  # settled, not chance agreeing with chance


@pytest.mark.slow(110)
def test_snakemake_passes_every_override_to_every_stage(project, request):
    """Snakemake runs the stage scripts on the whole resolved config: a value set with
    --config or --configfile reaches every stage that reads it, and what the models and the
    report record is what ran. params.yaml here holds other values than TINY's (method ce,
    s5cl.tau_u 0.9, evaluate.knn_k 7) and the overrides set TINY's back: the same bits as the
    shared `dvc repro` of TINY (another driver, folder and processes) show that every stage
    got every override."""
    write_params(project, TINY | {"checkpoint.every": 1, "s5cl.tau_u": 0.9, "evaluate.knn_k": 7})
    params = yaml.safe_load((project / "params.yaml").read_text())
    (project / "params.yaml").write_text(yaml.safe_dump(params | {"method": "ce"}, sort_keys=False))
    (project / "overlay.yaml").write_text("s5cl: {tau_u: 0.7}\nevaluate: {knn_k: 5}\n")  # TINY's
    overrides = ["--configfile", "overlay.yaml", "--config", "method=s5cl", "checkpoint={every: 0}"]
    assert "good condition" in run(["snakemake", "--lint"], project).stderr
    ran = run(["snakemake", "--cores", "2", *overrides], project)
    assert "src/s5cl/" not in ran.stdout + ran.stderr  # code is a digest, not 35 inputs a job
    _check_outputs(project)
    tiny_repro = request.getfixturevalue("tiny_repro")  # asked here: made meanwhile, if first
    # every metrics and plots file, the pseudo-labels and the report (kills.results)
    ours, theirs = results(project), results(tiny_repro.project)
    assert ours.keys() == theirs.keys()
    assert [name for name in ours if ours[name] != theirs[name]] == []
    assert (project / "suggest/to_label.csv").read_bytes() == (
        tiny_repro.project / "suggest/to_label.csv"
    ).read_bytes()
    assert (project / "logs/s5cl.log").read_text().count("s5cl: 3 steps") == 1
    first = (project / "logs/warmup.log").read_text().splitlines()[0]  # what runs where
    assert re.fullmatch(r"warmup: device cpu \(.+, \d+ threads\), fp32 \(compute\.precision\); "
                        r"\d+\.\d\dM parameters trained, 0\.00M frozen", first), first  # fmt: skip
    page = (project / "report/index.html").read_text()
    assert "S5CL pipeline: s5cl on digits" in page
    for name in ("warmup", "s5cl", "final"):
        recorded = torch.load(project / f"models/{name}.pt", weights_only=False)["params"]
        assert recorded["method"] == "s5cl" and recorded["s5cl"]["tau_u"] == 0.7
        assert recorded["checkpoint"]["every"] == 0 and recorded["evaluate"]["knn_k"] == 5
    again = run(["snakemake", "--cores", "2", *overrides], project)
    assert "Nothing to be done" in again.stdout + again.stderr
    # A changed value reruns exactly the stages that read it.
    assert set(_dry_run(project, *overrides, "evaluate={knn_k: 4}")) == {"evaluate", "report"}
    rerun = set(_dry_run(project, *overrides, "pseudolabel={threshold: 0.5}"))
    assert rerun == {"pseudolabel", "retrain", "evaluate", "report", "suggest"}
    assert _dry_run(project, *overrides[:-1], "checkpoint={every: 7}") == []
    # An edit of a module reruns exactly the stages that run it.
    edited = project / "src/s5cl/labelling/pseudo_labels.py"
    edited.write_text(edited.read_text() + "# edited\n")
    edited_by = {
        s.name
        for s in stages.STAGES
        if "src/s5cl/labelling/pseudo_labels.py" in stages.code_deps(s)
    }
    after = {s.name for s in stages.STAGES if edited_by & {u.name for u in stages.upstream(s.name)}}
    expected = edited_by | after  # the stages that run it, and those after them
    assert set(_dry_run(project, *overrides)) == expected and "pseudolabel" in edited_by
    assert "prepare" not in expected and "split" not in expected
    run(["git", "checkout", "-q", "--", "src"], project)

    # checkpoint.every: 0 reaches the training stage: a failed run leaves no checkpoint.
    failed = run(
        ["snakemake", "--cores", "2", "--forcerun", "warmup", "--until", "warmup", *overrides,
         "warmup={lr: 1e20}"], project, check=False,
    )  # fmt: skip
    assert failed.returncode != 0
    log = (project / "logs/warmup.log").read_text()
    assert (
        "error: the loss is nan at step 1" in log and "no checkpoints (checkpoint.every: 0)" in log
    )
    assert not list((project / "checkpoints").glob("warmup-*.pt"))


def test_a_user_mistake_is_one_line_not_a_traceback(project):
    result = run(
        ["python", "stages/split.py", "--set", "split.labels_per_class=0"], project, check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "split: error: bad parameter: split.labels_per_class = 0: "
        "Input should be greater than or equal to 1"
    ]
    (project / "params.yaml").rename(project / "kept.yaml")
    without = run(["dvc", "repro"], project, check=False)
    assert "failed to parse 'vars' in 'dvc.yaml': 'params.yaml' does not exist" in without.stderr
    (project / "kept.yaml").rename(project / "params.yaml")
    missing = run(["python", "stages/prepare.py"], project, check=False)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == (
        "prepare: error: data/raw/digits/manifest.parquet: table missing; rerun the download "
        "stage (dvc repro, or python stages/download.py)"
    )
    assert "Traceback" not in missing.stderr


def test_sigkill_in_any_stage_then_plain_dvc_repro_gives_the_same_results(tiny_repro):
    """The shared TINY run was made this way (conftest.tiny_repro): `dvc repro` killed in a
    data stage and in each training stage after its first checkpoint (each kill in the rerun
    of the one before), then plain `dvc repro` until done: no manual step, nothing left
    behind. Its metrics, plots, pseudo-labels and report are those of an uninterrupted run of
    the same params and seed, made in another folder by other processes:
    test_snakemake_passes_every_override_to_every_stage compares them bit for bit."""
    for kill in tiny_repro.kills:
        assert kill.landed == kill.stage, tiny_repro.kills
    said = tiny_repro.said
    assert "warmup resumed at step" in said[2] and "s5cl resumed at step" in said[3], said
    assert tiny_repro.attempts == 1, tiny_repro.last
    assert "retrain resumed at step" in tiny_repro.rerun, tiny_repro.rerun
    assert leftovers(tiny_repro.project) == []
