"""Bad input, one test each: the user sees one line naming the file, and nothing the earlier
stages made is lost. Real blood-cell images (../shared/data/pbc-240), spoilt in the ways real
folders get spoilt."""

from __future__ import annotations

import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from s5cl.cli import run_stage

from .conftest import PBC, ROOT, needs_shared

pytestmark = needs_shared()
CLASSES = ("basophil", "eosinophil")
PER_CLASS = 12


@dataclass
class Ran:
    code: int
    out: str
    err: str  # progress bars and warnings, then any error

    @property
    def last(self) -> str:
        lines = self.err.strip().splitlines()
        return lines[-1] if lines else ""


def stage(name: str, capsys, *sets: str) -> Ran:
    """Run stage `name` in-process exactly as `python stages/<name>.py --set ...` would."""
    capsys.readouterr()
    code = 0
    old_argv, old_showwarning = sys.argv, warnings.showwarning
    sys.argv = [f"stages/{name}.py"] + [arg for item in sets for arg in ("--set", item)]
    try:
        run_stage(name)
    except SystemExit as exit_:
        code = int(exit_.code)
    finally:
        sys.argv, warnings.showwarning = old_argv, old_showwarning
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return Ran(code, out, err)


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A project whose dataset is a folder of 2 x 12 real PBC images, downloaded and packed."""
    tree = tmp_path / "tree"
    for name in CLASSES:
        (tree / name).mkdir(parents=True)
        for path in sorted((PBC / name).glob("*.jpg"))[:PER_CLASS]:
            shutil.copy(path, tree / name / path.name)
    project = tmp_path / "project"
    project.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"] |= {"name": "folder", "root": str(tree), "workers": 1}
    params["split"] |= {"labels_per_class": 2, "test_fraction": 0.25, "val_fraction": 0.1}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(project)
    return project


def _good_run(capsys) -> dict[str, bytes]:
    """download, prepare and split on the clean folder; the bytes of what they wrote."""
    for name in ("download", "prepare", "split"):
        assert stage(name, capsys).code == 0
    outputs = [
        "data/raw/folder/manifest.parquet",
        "data/packed/folder/images.u8",
        "data/packed/folder/index.parquet",
        "data/splits/split.parquet",
    ]
    return {path: Path(path).read_bytes() for path in outputs}


def _still_there(before: dict[str, bytes], *changed: str) -> None:
    for path, data in before.items():
        if path not in changed:
            assert Path(path).read_bytes() == data, f"{path} was lost or changed"


def _a_real_image(tree: Path) -> Image.Image:
    return Image.open(sorted((tree / "basophil").glob("*.jpg"))[0])


def _truncated_jpeg(path: Path, real: Image.Image) -> None:
    buffer = Path(real.filename).read_bytes()
    path.write_bytes(buffer[: len(buffer) // 2])


def _sixteen_bit(path: Path, real: Image.Image) -> None:
    gray = np.asarray(real.convert("L")).astype(np.uint16) * 257
    Image.fromarray(gray).save(path)  # mode I;16: convert("RGB") would clip it to white


BAD_FILES = {
    "non_image": ("notes.txt", lambda p, r: p.write_text("scanned 2024-03-01, slide 7"),
                  "not an image (PIL cannot identify it)"),
    "truncated_jpeg": ("cut.jpg", _truncated_jpeg, "truncated or corrupt image (image file is"),
    "zero_bytes": ("empty.jpg", lambda p, r: p.write_bytes(b""), "empty file (0 bytes)"),
    "sixteen_bit": ("deep.png", _sixteen_bit, "pixel mode I;16 (16-bit, 32-bit or float)"),
    "strip": ("strip.png", lambda p, r: r.crop((0, 0, 300, 40)).save(p),
              "300x40 pixels: resizing to a square would squash it"),
    "tiny": ("icon.png", lambda p, r: r.resize((4, 4)).save(p), "4x4 pixels, smaller than 8"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_is_named_in_one_line_and_earlier_outputs_stay(project, capsys, case):
    before = _good_run(capsys)
    tree = project.parent / "tree"
    name, write, problem = BAD_FILES[case]
    bad = tree / "eosinophil" / name
    write(bad, _a_real_image(tree))

    assert stage("download", capsys).code == 0  # listing is fine; decoding is prepare's job
    ran = stage("prepare", capsys)
    assert ran.code == 2
    assert ran.last.startswith(f"prepare: error: {bad.resolve()}: {problem}")
    assert ran.last.endswith("; remove or replace it, or set data.on_bad_image: skip")
    _still_there(before, "data/raw/folder/manifest.parquet")  # the old packed data is whole


def test_skip_leaves_bad_files_out_and_lists_them_beside_the_index(project, capsys):
    _good_run(capsys)
    tree = project.parent / "tree"
    real = _a_real_image(tree)
    for name, write, _ in BAD_FILES.values():
        write(tree / "eosinophil" / name, real)
    assert stage("download", capsys).code == 0
    ran = stage("prepare", capsys, "data.on_bad_image=skip")
    assert ran.code == 0
    assert f"{2 * PER_CLASS} images packed" in ran.out
    assert f"({len(BAD_FILES)} bad files skipped)" in ran.out
    assert f"warning: skipped {len(BAD_FILES)} bad files (data.on_bad_image: skip)" in ran.err
    skipped = pd.read_csv("data/packed/folder/skipped.csv")
    assert sorted(Path(p).name for p in skipped["path"]) == sorted(
        n for n, _, _ in BAD_FILES.values()
    )
    for name, _, problem in BAD_FILES.values():
        assert (
            skipped.loc[skipped["path"].str.endswith(name), "problem"].iloc[0].startswith(problem)
        )
    index = pd.read_parquet("data/packed/folder/index.parquet")
    assert len(index) == 2 * PER_CLASS and index["path"].str.endswith(".jpg").all()
    assert stage("split", capsys).code == 0


def test_an_image_far_from_the_usual_size_is_kept_with_a_warning(project, capsys):
    tree = project.parent / "tree"
    small = tree / "eosinophil" / "thumbnail.png"
    _a_real_image(tree).resize((90, 90)).save(small)
    assert stage("download", capsys).code == 0
    ran = stage("prepare", capsys)
    assert ran.code == 0
    assert (
        f"warning: 1 images are far from the usual 360x363, e.g. {small.resolve()} (90x90); "
        "resized like the rest"
    ) in ran.err
    assert len(pd.read_parquet("data/packed/folder/index.parquet")) == 2 * PER_CLASS + 1


def test_an_empty_class_folder_is_named(project, capsys):
    before = _good_run(capsys)
    empty = project.parent / "tree" / "monocyte"
    empty.mkdir()
    ran = stage("download", capsys)
    assert ran.code == 2
    assert (
        ran.last == f"download: error: {empty}: class folder is empty; remove it or add its images"
    )
    _still_there(before)


def test_the_same_image_in_training_and_test_is_leakage(project, capsys):
    before = _good_run(capsys)
    tree = project.parent / "tree"
    image = sorted((tree / "basophil").glob("*.jpg"))[0]
    copy = project.parent / "held_out" / "copy.jpg"
    copy.parent.mkdir()
    shutil.copy(image, copy)
    rows = [f"{p},{p.parent.name},train" for p in sorted(tree.glob("*/*.jpg"))]
    csv = project.parent / "labels.csv"
    csv.write_text("path,label,subset\n" + "\n".join(rows) + f"\n{copy},basophil,test\n")
    sets = f"data.root={csv}"
    assert stage("download", capsys, sets).code == 0
    assert stage("prepare", capsys, sets).code == 0
    ran = stage("split", capsys, sets)
    assert ran.code == 2
    assert ran.last.startswith(f"split: error: leakage: {copy.resolve()} (test) and ")
    assert f"{image.resolve()} (train) are the same image (md5 " in ran.last
    _still_there(before, *[p for p in before if not p.startswith("data/splits")])


def test_the_same_image_under_two_labels_is_named(project, capsys):
    before = _good_run(capsys)
    tree = project.parent / "tree"
    image = sorted((tree / "basophil").glob("*.jpg"))[0]
    shutil.copy(image, tree / "eosinophil" / "relabelled.jpg")
    assert stage("download", capsys).code == 0
    assert stage("prepare", capsys).code == 0
    ran = stage("split", capsys)
    assert ran.code == 2
    assert "relabelled.jpg (eosinophil) and " in ran.last
    assert ran.last.endswith("(basophil) are the same image under two labels; remove the wrong one")
    assert Path("data/splits/split.parquet").read_bytes() == before["data/splits/split.parquet"]


def test_a_copy_within_the_training_images_follows_its_original(project, capsys):
    tree = project.parent / "tree"
    image = sorted((tree / "basophil").glob("*.jpg"))[0]
    shutil.copy(image, tree / "basophil" / "again.jpg")
    _good_run(capsys)
    index = pd.read_parquet("data/packed/folder/index.parquet")
    roles = pd.read_parquet("data/splits/split.parquet")["role"]
    rows = np.flatnonzero(
        index["md5"] == index["md5"][index["path"].str.endswith("again.jpg")].iloc[0]
    )
    assert len(rows) == 2 and roles[rows[0]] == roles[rows[1]]
