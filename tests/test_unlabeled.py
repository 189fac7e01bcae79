"""Real few-label data: images without a label in a CSV, an `unlabeled/` folder or
data.unlabeled_root; groups (patients) kept apart; every stage without hidden truth; and the
labelling loop closed on pbc-240 turned into the case a user brings (most images unlabeled, 3
labeled per class, a labeled test set), under Snakemake, then DVC."""

from __future__ import annotations

import io
import json
import os
import re
import threading
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from s5cl import cli
from s5cl.config.params import DataParams, SplitParams
from s5cl.data.packing import INDEX, pack_images
from s5cl.data.registry import download_dataset
from s5cl.data.splitting import make_split
from s5cl.errors import UserError
from s5cl.pipeline import stages

from .conftest import PBC, SHARED, TINY, capture, needs_shared, run, stage, write_params

CLASSES = ("basophil", "eosinophil", "lymphocyte")


def _cells(name: str, start: int, count: int) -> list[Path]:
    return sorted((PBC / name).glob("*.jpg"))[start : start + count]


def _listed(tmp_path: Path, **data) -> pd.DataFrame:
    return download_dataset(DataParams(name="folder", **data), tmp_path / "raw", tmp_path / "dl")


@needs_shared()
def test_a_csv_row_without_a_label_and_subset_unlabeled_are_images_without_a_label(tmp_path):
    rows = [(p, n, "train") for n in CLASSES for p in _cells(n, 0, 3)]
    rows += [(p, "", "") for p in _cells("platelet", 0, 4)]  # empty label, no subset
    rows += [(p, "", "unlabeled") for p in _cells("monocyte", 0, 2)]
    csv = tmp_path / "cells.csv"
    pd.DataFrame(rows, columns=["path", "label", "subset"]).to_csv(csv, index=False)
    manifest = _listed(tmp_path, root=str(csv))
    assert (manifest["subset"] == "unlabeled").sum() == 6
    assert set(manifest.loc[manifest["subset"] == "unlabeled", "class_name"]) == {""}
    stats = pack_images(tmp_path / "raw", tmp_path / "packed", 16, workers=1)
    index = pd.read_parquet(tmp_path / "packed" / INDEX)
    assert stats["class_names"] == sorted(CLASSES) and stats["unlabeled"] == 6
    assert (index["label"] == -1).sum() == 6 and set(stats["counts"]) == {"train"}

    for row, line in (((_cells("platelet", 9, 1)[0], "basophil", "unlabeled"), 2),
                      ((_cells("platelet", 9, 1)[0], "", "test"), 2)):  # fmt: skip
        pd.DataFrame([row], columns=["path", "label", "subset"]).to_csv(csv, index=False)
        with pytest.raises(UserError, match=f"cells.csv line {line}: "):
            _listed(tmp_path, root=str(csv))
    only = [(p, "", "") for p in _cells("platelet", 0, 3)]
    pd.DataFrame(only, columns=["path", "label", "subset"]).to_csv(csv, index=False)
    with pytest.raises(UserError, match="no labeled image; a classifier needs labeled images"):
        _listed(tmp_path, root=str(csv))


@needs_shared()
def test_an_unlabeled_folder_beside_the_class_folders_and_unlabeled_root(tmp_path):
    root = tmp_path / "cells"
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for cell in _cells(name, 0, 2):
            (root / name / cell.name).symlink_to(cell)
    (root / "todo" / "day1").mkdir(parents=True)  # a configurable name, subfolders walked
    for cell in _cells("platelet", 0, 3):
        (root / "todo" / "day1" / cell.name).symlink_to(cell)
    manifest = _listed(tmp_path, root=str(root), unlabeled_dir="todo")
    assert (manifest["subset"] == "unlabeled").sum() == 3
    assert sorted(manifest["class_name"].unique()) == ["", *sorted(CLASSES)]

    more = tmp_path / "more"
    more.mkdir()
    for cell in _cells("neutrophil", 0, 4):
        (more / cell.name).symlink_to(cell)
    manifest = _listed(tmp_path, root=str(root), unlabeled_dir="todo", unlabeled_root=str(more))
    assert (manifest["subset"] == "unlabeled").sum() == 7
    listed = tmp_path / "more.csv"
    pd.DataFrame({"path": [str(p) for p in _cells("neutrophil", 0, 2)]}).to_csv(listed)
    manifest = _listed(tmp_path, root=str(root), unlabeled_dir="todo", unlabeled_root=str(listed))
    assert (manifest["subset"] == "unlabeled").sum() == 5

    # A bad image among the unlabeled ones is named, or skipped with data.on_bad_image: skip.
    (root / "todo" / "broken.jpg").write_bytes(b"not a jpeg")
    _listed(tmp_path, root=str(root), unlabeled_dir="todo")
    with pytest.raises(UserError, match=r"broken.jpg: not an image .*data.on_bad_image: skip"):
        pack_images(tmp_path / "raw", tmp_path / "packed", 16, workers=1)
    with pytest.warns(UserWarning, match="skipped 1 bad files"):
        stats = pack_images(
            tmp_path / "raw", tmp_path / "packed", 16, workers=1, on_bad_image="skip"
        )
    assert stats["unlabeled"] == 3 and stats["shape"][0] == 9


@given(seed=st.integers(0, 2**16), extra=st.integers(1, 300))
@settings(max_examples=20, deadline=None)
def test_images_without_a_label_change_nothing_else_and_are_never_held_out(seed, extra):
    """Adding unlabeled images (label -1) anywhere leaves every labeled image's role as it was;
    none of them is labeled, val or test."""
    from sklearn.datasets import load_digits

    labels = load_digits().target
    cfg = SplitParams(labels_per_class=3)
    plain = make_split(labels, cfg, seed)
    rng = np.random.default_rng(seed)
    mixed = np.insert(labels, rng.integers(0, len(labels), extra), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the budget hides labels: said, and expected here
        table = make_split(mixed, cfg, seed)
    without = mixed < 0
    assert (table.loc[without, "role"] == "unlabeled").all()
    assert table.loc[~without, "role"].tolist() == plain["role"].tolist()


def test_groups_stay_in_one_part_and_their_unlabeled_images_are_excluded(digits_labels):
    rng = np.random.default_rng(0)
    labels = np.where(rng.random(len(digits_labels)) < 0.3, -1, digits_labels)
    groups = rng.integers(0, 40, len(labels)).astype(str)
    cfg = SplitParams(labels_per_class=None, label_fraction=1.0, group="patient")
    table = make_split(labels, cfg, 5, groups=groups)
    part = table["role"].replace({"labeled": "training", "unlabeled": "training"})
    used = part != "excluded"
    assert (pd.Series(groups[used]).groupby(part[used].to_numpy()).unique().explode()
            .value_counts() == 1).all()  # fmt: skip
    assert set(table["role"]) == {"labeled", "unlabeled", "val", "test", "excluded"}
    excluded = table["role"] == "excluded"
    assert (labels[excluded] == -1).all()
    held = set(groups[table["role"].isin(["val", "test"])])
    assert set(groups[excluded]) <= held
    assert 0.1 < (table["role"] == "test").sum() / (labels >= 0).sum() < 0.3
    # all labeled training images are labeled (label_fraction 1); none is hidden
    assert not ((labels >= 0) & (table["role"] == "unlabeled")).any()


def test_a_split_that_degenerates_says_so_in_one_line_each(digits_labels):
    labels = np.where(np.arange(len(digits_labels)) < 200, digits_labels, -1)
    few = labels.copy()
    few[(few == 3)] = -1
    few[np.flatnonzero(digits_labels == 3)[:2]] = 3  # class 3: two labeled images
    with pytest.warns(UserWarning) as caught:
        make_split(few, SplitParams(labels_per_class=5, val_fraction=0.0), 0)
    said = [str(w.message) for w in caught]
    assert "class '3' has 2 labeled training images: none for the test set" in said[0]
    fewer = "fewer than split.labels_per_class=5: all 2 are used"
    assert any("class '3' has 2 labeled training images (2 bef" in s and fewer in s for s in said)
    assert any(s.startswith("98 of your labeled images are hidden as unlabeled") for s in said)

    def corner(pool, budget):  # a class-blind pick that misses classes
        return pool[np.argsort(digits_labels[pool], kind="stable")[:budget]]

    with pytest.warns(UserWarning, match=r"split.select=random labeled 1 of 10 classes \(none of"):
        make_split(digits_labels, SplitParams(labels_per_class=1), 0, choose=corner)
    with pytest.raises(UserError, match=r"split.select=typiclust: chooses among images whose"):
        make_split(labels, SplitParams(select="typiclust"), 0, choose=corner)
    tiny = np.full(60, -1)
    tiny[:4] = [0, 0, 1, 1]
    with pytest.raises(UserError, match=r"split.val_fraction=0.1: the val set is empty \(the "
                       r"largest class has 2 labeled training images"):  # fmt: skip
        make_split(tiny, SplitParams(labels_per_class=None, label_fraction=1.0,
                                     test_fraction=0.5), 0)  # fmt: skip


# ------------------------------------------------------------------ the realistic case, end to end


def realistic_pbc(dest: Path, labeled: int = 3, test: int = 10, unlabeled: int = 50) -> Path:
    """pbc-240 as a user brings it: `labeled.csv` with `labeled` images per class and a labeled
    test set of `test` per class (subset test), a patient column, and `unlabeled/`: a folder of
    `unlabeled` cells per class without any label. Links to the real images, nothing copied."""
    rows = []
    (dest / "unlabeled").mkdir(parents=True)
    for n, folder in enumerate(sorted(p for p in PBC.iterdir() if p.is_dir())):
        cells = _cells(folder.name, 0, labeled + test + unlabeled)
        rows += [(c, folder.name, "train", f"p{n}{i % 2}") for i, c in enumerate(cells[:labeled])]
        rows += [(c, folder.name, "test", f"t{n}{i}") for i, c in enumerate(cells[labeled:][:test])]
        for cell in cells[labeled + test :]:
            (dest / "unlabeled" / cell.name).symlink_to(cell)
    columns = ["path", "label", "subset", "patient"]
    pd.DataFrame(rows, columns=columns).to_csv(dest / "labeled.csv", index=False)
    return dest


def _line(output: str, stage: str) -> str:
    """The stage's summary line in a log (not one of its progress bars)."""
    lines = output.replace("\r", "\n").splitlines()
    return next(x for x in lines if x.startswith(f"{stage}: ") and "%|" not in x)


def _answer_as_the_page_does(project: Path, params: Path) -> list[str]:
    """Start the labelling page's server on the suggestions and answer each over HTTP with the
    cell's true class (its folder in pbc-240), as a haematologist would."""
    from s5cl.labelling.page import open_session, serve

    data = yaml.safe_load(params.read_text())["data"]
    session = open_session(project / "suggest/to_label.csv", project / "labels/labels.csv",
                           project / "data/packed" / data["name"])  # fmt: skip
    server = serve(session, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    answered = []
    try:
        page = urllib.request.urlopen(f"{url}/").read().decode()
        token = re.search(r'const TOKEN = "([^"]+)"', page).group(1)  # what the page sends
        while (current := session.state()["current"]) is not None:
            image = urllib.request.urlopen(f"{url}{current['image']}?token={token}").read()
            assert min(Image.open(io.BytesIO(image)).size) >= 384  # the original cell, enlarged
            truth = Path(current["path"]).parent.name
            body = json.dumps({"path": current["path"], "label": truth}).encode()
            headers = {"Content-Type": "application/json", "X-S5CL-Token": token}
            request = urllib.request.Request(f"{url}/api/answer", body, headers)
            assert urllib.request.urlopen(request).status == 200
            answered.append(current["path"])
    finally:
        server.shutdown()
        server.server_close()
    return answered


@pytest.mark.slow(195)
@needs_shared()
def test_real_unlabeled_images_and_one_labelling_round_under_snakemake_then_dvc(
    project, monkeypatch, capsys
):
    """The loop a user runs: train on 3 labels per class and 400 unlabeled cells (Snakemake),
    `s5cl suggest`, answer on the page, retrain with the answers (dvc repro): the test set is
    the same in both rounds, the answers join the labeled set, no stage needs hidden truth."""
    data = realistic_pbc(project / "cells")
    write_params(project, TINY | {
        "data.name": "folder", "data.root": str(data / "labeled.csv"),
        "data.unlabeled_root": str(data / "unlabeled"), "split.labels_per_class": None,
        "split.label_fraction": 1.0, "split.val_fraction": 0.0, "split.group": "patient",
        "suggest.count": 8, "evaluate.knn_k": 3,
    })  # fmt: skip
    run(["snakemake", "--cores", "2"], project)
    logs = {
        s: (project / f"logs/{s}.log").read_text() for s in ("split", "pseudolabel", "evaluate")
    }
    split_line = _line(logs["split"], "split")
    assert split_line.startswith(
        "split: labeled 24, unlabeled 400 (400 without a label), val 0, test 80; test from the "
        "dataset's own split; patients: 16 labeled, 0 val, 80 test"
    ), split_line
    pseudo_line = _line(logs["pseudolabel"], "pseudolabel")
    assert pseudo_line.startswith("pseudolabel: kept 100.0% of 400 (mean confidence")
    assert "no truth to score them (the unlabeled images have no label)" in pseudo_line
    pseudo = json.loads((project / "metrics/pseudolabel.json").read_text())
    assert pseudo["truth_count"] == 0 and "accuracy_kept" not in pseudo
    assert sum(pseudo["kept_per_class"].values()) == 400
    before = json.loads((project / "metrics/evaluate.json").read_text())
    evaluate_line = _line(logs["evaluate"], "evaluate")
    assert "80 test images, final's interval ±" in evaluate_line
    wide = before["final"]["accuracy_high"] - before["final"]["accuracy_low"] > 0.2
    assert ("warning: the test set has 80 labeled images" in logs["evaluate"]) == wide
    page = (project / "report/index.html").read_text()
    assert "no truth to score them" in page
    first = pd.read_parquet(project / "data/splits/split.parquet")

    suggested = run(["s5cl", "suggest", "--count", "8"], project).stdout
    assert suggested.startswith("s5cl suggest: 8 of 400 unlabeled images by margin")
    answered = _answer_as_the_page_does(project, project / "params.yaml")
    assert len(answered) == 8
    write_params(project, {"split.labeled_csv": "labels/labels.csv"})
    second = run(["dvc", "repro"], project).stdout
    # DVC never ran here: one plain `dvc repro` runs every stage, in the table's order
    assert re.findall(r"Running stage '(\w+)'", second) == [s.name for s in stages.STAGES]
    split_line = _line(second, "split")
    assert split_line.startswith("split: labeled 32, unlabeled 392 (392 without a label)")
    assert "8 labels from labels/labels.csv (8 new)" in split_line
    after = pd.read_parquet(project / "data/splits/split.parquet")
    test = first["role"] == "test"
    assert after["role"][test].eq("test").all() and (after["role"] == "test").sum() == 80
    index = pd.read_parquet(project / "data/packed/folder/index.parquet")
    newly = index["path"].isin(answered).to_numpy()
    assert after["role"][newly].eq("labeled").all() and (first["label"][newly] == -1).all()
    truth = [Path(p).parent.name for p in index["path"][newly]]
    names = json.loads((project / "data/packed/folder/stats.json").read_text())["class_names"]
    assert [names[i] for i in after["label"][newly]] == truth
    final = json.loads((project / "metrics/evaluate.json").read_text())["final"]
    for scores in (before["final"], final):
        assert scores["accuracy_low"] <= scores["accuracy"] <= scores["accuracy_high"]
    print(f"\nround 1: final {before['final']['accuracy']:.3f} "
          f"[{before['final']['accuracy_low']:.3f}, {before['final']['accuracy_high']:.3f}]; "
          f"round 2: final {final['accuracy']:.3f} "
          f"[{final['accuracy_low']:.3f}, {final['accuracy_high']:.3f}]")  # fmt: skip

    # The trained model on new images: a folder of them, then files of any size to stdout.
    out = project / "preds.csv"
    run(["s5cl", "predict", "--folder", str(PBC / "basophil"), "--out", str(out)], project)
    preds = pd.read_csv(out)
    assert len(preds) == 240 and preds["path"].str.endswith(".jpg").all()
    assert set(preds["predicted"]) <= set(names)
    assert preds["confidence"].between(0, 1).all()
    labeled = torch.load(project / "models/final.pt", weights_only=False)["labeled"]
    assert len(labeled["paths"]) == 32 and preds["neighbour_1"].isin(labeled["paths"]).all()
    assert (preds["neighbour_1_similarity"] >= preds["neighbour_3_similarity"]).all()
    tile = next(iter(sorted((SHARED / "crc-tiles-tif").glob("*/*/*.tif"))))  # 224x224, not 360
    cell = sorted((PBC / "platelet").glob("*.jpg"))[0]
    monkeypatch.chdir(project)  # the rest in-process, as the command runs (conftest.capture)
    printed = capture(capsys, lambda: cli.main(["predict", str(cell), str(tile)])).out
    assert pd.read_csv(io.StringIO(printed))["path"].tolist() == [str(cell), str(tile)]
    bad = capture(capsys, lambda: cli.main(["predict", str(project / "params.yaml")]))
    assert bad.code == 2
    assert bad.err.strip() == (
        f"s5cl predict: error: {project / 'params.yaml'}: not an image (PIL cannot identify it)"
    )

    # A threshold no pseudo-label reaches: one line, and the stage still writes its outputs.
    strict = stage("pseudolabel", capsys, "--set", "pseudolabel.threshold=1.0").err
    assert "warning: pseudolabel kept 0% of 392 unlabeled images (no confidence reached " in strict
    assert "retrain learns nothing new from them" in strict


def _stage_error(project: Path, stage: str) -> str:
    result = run(["python", f"stages/{stage}.py"], project, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


@needs_shared()
def test_bad_few_label_inputs_are_one_line_each(project):
    data = realistic_pbc(project / "cells", labeled=1, test=0, unlabeled=2)
    write_params(project, {
        "data.name": "folder", "data.root": str(data / "labeled.csv"),
        "data.unlabeled_root": str(data / "unlabeled"), "split.labels_per_class": None,
        "split.label_fraction": 1.0,
    })  # fmt: skip
    for name in ("download", "prepare"):
        run(["python", f"stages/{name}.py"], project)
    assert _stage_error(project, "split") == (
        "split: error: split.test_fraction=0.2: the test set is empty (the largest class has 1 "
        "labeled training images, and round(0.2 x 1) = 0); add labeled images or raise "
        "split.test_fraction"
    )
    write_params(project, {"split.group": "scanner"})
    assert _stage_error(project, "split") == (
        "split: error: split.group='scanner': not a column of the dataset's CSV (its columns are "
        "patient); add it (dvc repro) or set split.group: null"
    )
    table = pd.read_csv(data / "labeled.csv")
    table.loc[2, "patient"] = ""
    table.to_csv(data / "labeled.csv", index=False)
    write_params(project, {"split.group": "patient"})
    for name in ("download", "prepare"):
        run(["python", f"stages/{name}.py"], project)
    assert _stage_error(project, "split") == (
        "split: error: split.group='patient': 1 images have no patient, e.g. "
        f"{os.path.realpath(table.loc[2, 'path'])}; give every image one"
    )


@needs_shared()
def test_plain_dvc_repro_sees_an_added_and_a_relabelled_image(project):
    """download lists the folder on every `dvc repro` (always_changed), reading only files
    whose size or time changed: an unchanged folder stops the rerun at download, an added or
    moved image reruns prepare."""
    tree = project / "cells"
    for name in CLASSES[:2]:
        (tree / name).mkdir(parents=True)
        for cell in _cells(name, 0, 3):
            (tree / name / cell.name).symlink_to(cell)
    write_params(project, {"data.name": "folder", "data.root": str(tree), "data.workers": 1})

    def repro() -> list[str]:
        return re.findall(
            r"Running stage '(\w+)'", run(["dvc", "repro", "prepare"], project).stdout
        )

    def counts() -> dict:
        stats = json.loads((project / "data/packed/folder/stats.json").read_text())
        return stats["counts"]["train"]

    assert repro() == ["download", "prepare"]
    assert repro() == ["download"]  # listed again, the same list: prepare stays cached
    extra = _cells("eosinophil", 5, 1)[0]
    (tree / "eosinophil" / extra.name).symlink_to(extra)
    assert repro() == ["download", "prepare"] and counts() == {"basophil": 3, "eosinophil": 4}
    (tree / "eosinophil" / extra.name).rename(tree / "basophil" / extra.name)  # relabelled
    assert repro() == ["download", "prepare"] and counts() == {"basophil": 4, "eosinophil": 3}
