"""Every user mistake in one table: each case spoils a copy of a small trained project the way
real projects get spoilt, runs what the user would run, and checks the exact one-line message,
exit code 2, no traceback, and that every output made before is byte-identical (a case lists
the outputs its own earlier steps rewrite). Real blood-cell images (../shared/data/pbc-240).

docs/faults.md is the user's side of this table.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from s5cl.cli import main as predict_main
from s5cl.pipeline.runner import run_stage

from .conftest import PBC, ROOT, VENV_BIN, Ran, capture, needs_shared, stage

pytestmark = needs_shared()
CLASSES = ("basophil", "eosinophil")
PER_CLASS = 12
PACKED = "data/packed/folder"
PRIVATE = {
    "data.name": "folder",
    "data.workers": 1,
    "split.labels_per_class": 2,
    "split.test_fraction": 0.25,
    "split.val_fraction": 0.1,
    "warmup.steps": 2,
    "warmup.batch_labeled": 8,
    "warmup.eval_every": 2,
    "compute.fuse_augment": False,  # compiling would cost more than these runs
    "checkpoint.every": 0,
}


def predict(capsys, *args: str) -> Ran:
    return capture(capsys, lambda: predict_main(["predict", *args]))


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


# ---------------------------------------------------------------- the project every case copies


def _write_params(project: Path, tree: Path, extra: dict | None = None) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in {**PRIVATE, "data.root": str(tree), **(extra or {})}.items():
        section, key = dotted.split(".")
        params[section][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """2 x 12 real PBC images in a class-folder tree; downloaded, packed, split and warmed up."""
    root = tmp_path_factory.mktemp("base")
    tree = root / "tree"
    for name in CLASSES:
        (tree / name).mkdir(parents=True)
        for path in sorted((PBC / name).glob("*.jpg"))[:PER_CLASS]:
            shutil.copy(path, tree / name / path.name)
    project = root / "project"
    project.mkdir()
    _write_params(project, tree)
    cwd, argv = Path.cwd(), sys.argv
    os.chdir(project)
    try:
        for name in ("download", "prepare", "split", "warmup"):
            sys.argv = [f"stages/{name}.py"]
            run_stage(name)
    except SystemExit as exit_:
        raise AssertionError(f"the base project failed in a stage ({exit_.code})") from None
    finally:
        os.chdir(cwd)
        sys.argv = argv
    return root


@dataclass
class Env:
    project: Path
    tree: Path

    def image(self, cls: str = "basophil", i: int = 0) -> Path:
        return sorted((self.tree / cls).glob("*.jpg"))[i]

    def real(self) -> Image.Image:
        return Image.open(self.image())


@pytest.fixture
def env(base, tmp_path, monkeypatch) -> Env:
    """A copy of the base project and its tree; model files are hard links (never written to
    in place: a case replaces a file, it does not edit it)."""
    tree = tmp_path / "tree"
    shutil.copytree(base / "tree", tree)
    project = tmp_path / "project"
    shutil.copytree(base / "project", project, ignore=shutil.ignore_patterns("models"))
    shutil.copytree(base / "project" / "models", project / "models", copy_function=os.link)
    _write_params(project, tree)
    # the copy's tree is its data.root: as if download had listed it (prepare checks that)
    from s5cl.config.params import load_params
    from s5cl.io import write_json
    from s5cl.pipeline.download import LISTED, listed_with

    listed = project / "data/raw/folder" / LISTED
    listed.unlink()
    write_json(listed, listed_with(load_params(project / "params.yaml", [])))
    monkeypatch.chdir(project)
    return Env(project, tree)


def outputs(project: Path) -> dict[str, bytes]:
    """Every output a stage made (not data/downloads: download's own store and md5 cache)."""
    return {
        str(p.relative_to(project)): p.read_bytes()
        for folder in ("data", "models", "metrics")
        for p in sorted((project / folder).rglob("*"))
        if p.is_file() and not p.relative_to(project).as_posix().startswith("data/downloads/")
    }


def replace(path: Path, data: bytes) -> None:
    """Write `path` as a new file (a hard-linked one would change the base project too)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


# ---------------------------------------------------------------- ways files get spoilt


def _truncated_jpeg(path: Path, env: Env) -> None:
    data = env.image().read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _sixteen_bit(path: Path, env: Env) -> None:
    gray = np.asarray(env.real().convert("L")).astype(np.uint16) * 257
    Image.fromarray(gray).save(path)  # mode I;16: convert("RGB") would clip it to white


def _lab_tiff(path: Path, env: Env) -> None:
    env.real().convert("RGB").resize((64, 64)).save(path.with_suffix(".png"))
    Image.new("LAB", (64, 64), (60, 10, 10)).save(path)
    path.with_suffix(".png").unlink()


def bomb_png(path: Path, side: int = 20_000) -> None:
    """A real PNG whose header says side x side pixels (the kind of file a decompression bomb
    is: PIL refuses it at open, before decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


BAD_FILES = {
    "non_image": ("notes.txt", lambda p, e: p.write_text("scanned 2024-03-01, slide 7"),
                  "not an image (PIL cannot identify it)"),
    "truncated_jpeg": ("cut.jpg", _truncated_jpeg, "truncated or corrupt image (image file is "
                       "truncated (…))"),
    "zero_bytes": ("empty.jpg", lambda p, e: p.write_bytes(b""), "empty file (0 bytes)"),
    "sixteen_bit": ("deep.png", _sixteen_bit, "pixel mode I;16 (16-bit, 32-bit or float): "
                    "expected an 8-bit image"),
    "lab_tiff": ("lab.tif", _lab_tiff, "pixel mode LAB: a colour space PIL does not convert to "
                 "RGB; save it as RGB"),
    "strip": ("strip.png", lambda p, e: e.real().crop((0, 0, 300, 40)).save(p),
              "300x40 pixels: resizing to a square would squash it"),
    "tiny": ("icon.png", lambda p, e: e.real().resize((4, 4)).save(p),
             "4x4 pixels, smaller than 8 a side"),
    "bomb": ("slide.png", lambda p, e: bomb_png(p), "400,000,000 pixels, over PIL's "
             "decompression-bomb limit of 89,478,485 (a whole slide, not a tile?)"),
}  # fmt: skip


def _matches(line: str, expected: str) -> bool:
    """Exact, but `…` stands for a library's own words (PIL's, PyYAML's, pickle's)."""
    pattern = ".*".join(re.escape(part) for part in expected.split("…"))
    return re.fullmatch(pattern, line) is not None


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_image_is_named_in_one_line_and_the_packed_data_stays(env, capsys, case):
    before = outputs(env.project)
    name, write, problem = BAD_FILES[case]
    bad = env.tree / "eosinophil" / name
    write(bad, env)
    assert stage("download", capsys).code == 0  # listing is fine; decoding is prepare's job
    ran = stage("prepare", capsys)
    assert ran.code == 2
    expected = (
        f"prepare: error: {bad.resolve()}: {problem}; remove or replace it, or set "
        "data.on_bad_image: skip"
    )
    assert _matches(ran.last, expected), ran.last
    listed = ("data/raw/folder/manifest.parquet", "data/raw/folder/listed.json")
    after = {k: v for k, v in outputs(env.project).items() if k not in listed}
    assert after == {k: v for k, v in before.items() if k not in listed}  # packed data whole


def test_skip_leaves_every_kind_of_bad_file_out_and_lists_it(env, capsys):
    for name, write, _ in BAD_FILES.values():
        write(env.tree / "eosinophil" / name, env)
    assert stage("download", capsys).code == 0
    ran = stage("prepare", capsys, *sets("data.on_bad_image=skip"))
    assert ran.code == 0
    assert f"{2 * PER_CLASS} images packed" in ran.out
    assert f"({len(BAD_FILES)} bad files skipped)" in ran.out
    assert f"warning: skipped {len(BAD_FILES)} bad files (data.on_bad_image: skip)" in ran.err
    skipped = pd.read_csv(f"{PACKED}/skipped.csv")
    assert sorted(Path(p).name for p in skipped["path"]) == sorted(
        n for n, _, _ in BAD_FILES.values()
    )
    for name, _, problem in BAD_FILES.values():
        found = skipped.loc[skipped["path"].str.endswith(name), "problem"].iloc[0]
        assert _matches(found, problem), found
    assert stage("split", capsys).code == 0


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    """Spoil, then run `command` (a stage name, or "predict"); expect `message` as the last line
    of stderr (`{tree}`, `{root}` filled in; `…` for a library's own words) and exit 2.
    `first` runs before it and must succeed."""

    spoil: Callable[[Env], object]
    command: str
    args: tuple[str, ...] | Callable[[Env], tuple[str, ...]]
    message: str
    first: tuple[str, ...] = ()


MANIFEST = "data/raw/folder/manifest.parquet"


def _nested(env: Env) -> None:
    sub = env.tree / "eosinophil" / "batch2"
    sub.mkdir()
    for path in sorted((PBC / "eosinophil").glob("*.jpg"))[PER_CLASS : PER_CLASS + 3]:
        shutil.copy(path, sub / path.name)


def _csv(env: Env, rows: list[str], name: str = "labels.csv") -> Path:
    csv = env.tree.parent / name
    csv.write_text("".join(f"{row}\n" for row in rows))
    return csv


def _csv_root(env: Env, rows: list[str]) -> None:
    _write_params(env.project, env.tree, {"data.root": str(_csv(env, rows))})


def _case_names(env: Env) -> None:
    rows = [f"{p},basophil" for p in sorted((env.tree / "basophil").glob("*.jpg"))]
    rows += [f"{p},Basophil " for p in sorted((env.tree / "eosinophil").glob("*.jpg"))]
    _csv_root(env, ["path,label", *rows])


def _one_image_per_class(env: Env) -> None:
    _csv_root(env, ["path,label", f"{env.image('basophil')},basophil",
                    f"{env.image('eosinophil')},eosinophil"])  # fmt: skip


def _one_class(env: Env) -> None:
    _csv_root(env, ["path,label", *[f"{p},basophil" for p in env.tree.glob("*/*.jpg")]])


def _leak(env: Env) -> None:
    copy = env.tree.parent / "held_out" / "copy.jpg"
    copy.parent.mkdir()
    shutil.copy(env.image(), copy)
    rows = [f"{p},{p.parent.name},train" for p in sorted(env.tree.glob("*/*.jpg"))]
    _csv_root(env, ["path,label,subset", *rows, f"{copy},basophil,test"])


def _params_file(text: bytes) -> Callable[[Env], None]:
    return lambda env: (env.project / "bad.yaml").write_bytes(text)


def _weights(content: object) -> Callable[[Env], None]:
    def spoil(env: Env) -> None:
        torch.save(content() if callable(content) else content, env.project / "weights.pt")

    return spoil


def _resnet34_state() -> dict:
    from torchvision.models import resnet34

    return resnet34().state_dict()


def _truncate(path: str, keep: float = 0.5) -> Callable[[Env], None]:
    def spoil(env: Env) -> None:
        data = (env.project / path).read_bytes()
        replace(env.project / path, data[: int(len(data) * keep)])

    return spoil


def _random_bytes(name: str, size: int) -> Callable[[Env], None]:
    """A file of random bytes (seeded: unpickling each other file fails in its own way)."""
    return lambda env: (env.project / name).write_bytes(random.Random(size).randbytes(size))


def _model_edit(edit: Callable[[dict], object]) -> Callable[[Env], None]:
    """models/warmup.pt, read and written back with one thing changed by `edit`."""

    def spoil(env: Env) -> None:
        model = torch.load(env.project / "models/warmup.pt", weights_only=True)
        edit(model)
        (env.project / "models/warmup.pt").unlink()  # a hard link: never write into it
        torch.save(model, env.project / "models/warmup.pt")

    return spoil


def _more_params(extra: dict) -> Callable[[Env], None]:
    return lambda env: _write_params(env.project, env.tree, extra)


EMPTY_PARAMS = (
    "split: error: bad.yaml: empty; expected the sections of params.yaml (data:, split:, ...; "
    "copy the project's params.yaml)"
)


def _plain_state_dict(env: Env) -> None:
    model = torch.load("models/warmup.pt", weights_only=False)["model"]
    torch.save(model, env.project / "state.pt")


WEIGHTS = "warmup: error: model.weights='weights.pt': "
SPOILT_MODEL = (
    "not a model file of this project (written by warmup, s5cl or retrain, e.g. models/final.pt)"
)
PREDICT_FIX = "give --model a model file the pipeline wrote (models/final.pt, models/s5cl.pt)"
RERUN = "rerun the {} stage (dvc repro, or python stages/{}.py)"
IMAGES_U8 = f"{PACKED}/images.u8"

CASES = {
    # the dataset's tree and CSV (download)
    "subfolder_in_a_class": Case(
        _nested, "download", (),
        "download: error: {tree}/eosinophil/batch2: a folder inside a class folder (3 files); "
        "set data.recursive: true to give its images the class eosinophil, or move them out",
    ),
    "dangling_symlink": Case(
        lambda e: (e.tree / "basophil" / "gone.jpg").symlink_to(e.tree / "nowhere.jpg"),
        "download", (),
        "download: error: {tree}/basophil/gone.jpg: a symlink to {tree}/nowhere.jpg, which does "
        "not exist; fix or remove the link",
    ),
    "symlink_loop": Case(
        lambda e: (e.tree / "basophil" / "loop.jpg").symlink_to("loop.jpg"),
        "download", (),
        "download: error: {tree}/basophil/loop.jpg: a symlink loop (loop.jpg -> loop.jpg); fix "
        "or remove the link",
    ),
    "empty_class_folder": Case(
        lambda e: (e.tree / "monocyte").mkdir(), "download", (),
        "download: error: {tree}/monocyte: class folder is empty; remove it or add its images",
    ),
    "zero_byte_csv": Case(
        lambda e: _csv_root(e, []), "download", (),
        "download: error: {root}/labels.csv: empty file; expected a header path,label[,subset] "
        "and a row per image",
    ),
    "class_names_differing_in_case": Case(
        _case_names, "download", (),
        "download: error: class names 'Basophil' and 'basophil' differ only in case or spaces; "
        "use one spelling",
    ),
    "one_class_only": Case(
        _one_class, "prepare", (),
        "prepare: error: data/raw/folder/manifest.parquet: one class only (basophil); a "
        "classifier needs at least 2 (add a class folder, or check data.root)",
        first=("download",),
    ),
    "empty_test_set": Case(
        _one_image_per_class, "split", tuple(sets("split.labels_per_class=1")),
        "split: error: split.test_fraction=0.25: the test set is empty (the largest class has 1 "
        "labeled training images, and round(0.25 x 1) = 0); add labeled images or raise "
        "split.test_fraction",
        first=("download", "prepare"),
    ),
    "leakage": Case(
        _leak, "split", (),
        "split: error: leakage: {root}/held_out/copy.jpg (test) and {tree}/basophil/…"
        " (train) are the same image (md5 …); remove one of them",
        first=("download", "prepare"),
    ),
    "same_image_two_labels": Case(
        lambda e: shutil.copy(e.image(), e.tree / "eosinophil" / "relabelled.jpg"), "split", (),
        "split: error: {tree}/eosinophil/relabelled.jpg (eosinophil) and {tree}/basophil/… "
        "(basophil) are the same image under two labels; remove the wrong one",
        first=("download", "prepare"),
    ),
    "budget_above_a_class": Case(
        lambda e: None, "split", tuple(sets("split.labels_per_class=50")),
        "split: error: split.labels_per_class=50: class 'basophil' has only 8 training images "
        "left for 50 labels (12 before test and val are cut); lower it or the test/val fractions",
    ),
    # params files and --set
    "invalid_yaml": Case(
        _params_file(b"seed: 0\nsplit: [1\n"), "split", ("--params", "bad.yaml"),
        "split: error: bad.yaml line 3 column 1: expected ',' or ']', but got '<stream end>'",
    ),
    "invalid_yaml_in_set": Case(
        lambda e: None, "split", tuple(sets("split.val_fraction=[0.1")),
        "split: error: --set 'split.val_fraction=[0.1': the value is not valid YAML (expected "
        "',' or ']', but got '<stream end>')",
    ),
    "non_utf8_params": Case(
        _params_file(b"seed: 0\nmethod: s\xe9cl\n"), "split", ("--params", "bad.yaml"),
        "split: error: bad.yaml line 2 column 10: not UTF-8 text (byte 0xe9); save the file as "
        "UTF-8",
    ),
    "params_is_a_folder": Case(
        lambda e: None, "split", ("--params", "data"),
        "split: error: data: is a folder, not a params file",
    ),
    "params_missing": Case(
        lambda e: None, "split", ("--params", "nope.yaml"),
        "split: error: nope.yaml: no such params file (run from the project root)",
    ),
    "duplicate_key": Case(
        _params_file(b"seed: 0\nsplit:\n  val_fraction: 0.1\n  val_fraction: 0.2\n"), "split",
        ("--params", "bad.yaml"),
        "split: error: bad.yaml line 4 column 3: key 'val_fraction' is given twice (first on "
        "line 3); keep one",
    ),
    "out_of_range": Case(
        lambda e: None, "split", tuple(sets("s5cl.tau_u=0")),
        "split: error: bad parameter: s5cl.tau_u = 0: Input should be greater than 0",
    ),
    "unknown_key": Case(
        lambda e: None, "split", tuple(sets("s5cl.tau_uu=0.5")),
        "split: error: bad parameter: unknown parameter s5cl.tau_uu (check the spelling against "
        "params.yaml)",
    ),
    "set_without_value": Case(
        lambda e: None, "split", ("--set", "s5cl.tau_u"),
        "split: error: --set 's5cl.tau_u': expected section.key=value",
    ),
    "batch_not_a_multiple": Case(
        lambda e: None, "warmup", tuple(sets("warmup.batch_labeled=30")),
        "warmup: error: bad parameter: warmup: batch_labeled=30 must be a multiple of "
        "m_per_class=4",
    ),
    "empty_params_file": Case(
        _params_file(b""), "split", ("--params", "bad.yaml"), EMPTY_PARAMS,
    ),
    "params_only_comments": Case(
        _params_file(b"# all of it commented out\n"), "split", ("--params", "bad.yaml"),
        EMPTY_PARAMS,
    ),
    "params_null": Case(_params_file(b"null\n"), "split", ("--params", "bad.yaml"), EMPTY_PARAMS),
    "params_false": Case(
        _params_file(b"false\n"), "split", ("--params", "bad.yaml"),
        "split: error: bad.yaml: holds bool False, expected a mapping of sections",
    ),
    "params_a_list": Case(
        _params_file(b"[]\n"), "split", ("--params", "bad.yaml"),
        "split: error: bad.yaml: holds list [], expected a mapping of sections",
    ),
    "yes_for_a_number": Case(
        lambda e: None, "split", tuple(sets("warmup.steps=yes")),
        "split: error: bad parameter: warmup: steps = True: a yes/no, where a number is expected",
    ),
    "seed_beyond_numpy": Case(
        lambda e: None, "split", tuple(sets("seed=4294967296")),
        "split: error: bad parameter: seed = 4294967296: Input should be less than or equal to "
        "4294967295",
    ),
    "negative_test_seed": Case(
        lambda e: None, "split", tuple(sets("split.test_seed=-1")),
        "split: error: bad parameter: split.test_seed = -1: Input should be greater than or "
        "equal to 0",
    ),
    "embedding_beyond_memory": Case(
        lambda e: None, "warmup", tuple(sets("model.embedding_dim=1000000000")),
        "warmup: error: bad parameter: model.embedding_dim = 1000000000: Input should be less "
        "than or equal to 16384",
    ),
    # model files that read but do not fit
    "warmup_model_of_other_classes": Case(
        _model_edit(lambda m: m.update(class_names=["ADI", "TUM"])), "s5cl", (),
        "s5cl: error: models/warmup.pt: made for classes ['ADI', 'TUM'] at 32 px, but the data "
        "are ['basophil', 'eosinophil'] at 32 px (another dataset or data.size); "
        + RERUN.format(*["warmup"] * 2),
    ),
    "warmup_model_broken_weights": Case(
        _model_edit(lambda m: m["model"].pop("embedder.weight")), "s5cl", (),
        "s5cl: error: models/warmup.pt: its params, classes or weights do not make the network "
        "it describes (…); " + RERUN.format(*["warmup"] * 2),
    ),
    "warmup_model_broken_params": Case(
        _model_edit(lambda m: m["params"]["model"].update(arch="resnet9")), "s5cl", (),
        "s5cl: error: models/warmup.pt: its params, classes or weights do not make the network "
        "it describes (…); " + RERUN.format(*["warmup"] * 2),
    ),
    "predict_model_broken_weights": Case(
        _model_edit(lambda m: m["model"].pop("embedder.weight")), "predict",
        lambda e: ("--model", "models/warmup.pt", str(e.image())),
        "s5cl predict: error: models/warmup.pt: its params, classes or weights do not make the "
        "network it describes (…); " + PREDICT_FIX,
    ),
    "predict_model_bad_neighbours": Case(
        _model_edit(lambda m: m["labeled"].update(embeddings=torch.zeros(1, 3))), "predict",
        lambda e: ("--model", "models/warmup.pt", str(e.image())),
        "s5cl predict: error: models/warmup.pt: labeled embeddings of shape torch.Size([1, 3]), "
        "not a model file of this project; " + PREDICT_FIX,
    ),
    "knn_k_above_the_test_images": Case(
        _more_params({"s5cl.steps": 2, "s5cl.batch_labeled": 8, "s5cl.batch_unlabeled": 8,
                      "retrain.steps": 2, "evaluate.knn_k": 6}),
        "evaluate", (),
        "evaluate: error: evaluate.knn_k=6: the test set has 6 images, and kNN needs more than "
        "k; lower evaluate.knn_k (at most 5) or label more test images",
        first=("s5cl", "pseudolabel", "retrain"),
    ),
    # model.weights
    "weights_random_bytes": Case(
        _random_bytes("weights.pt", 4096), "warmup",
        tuple(sets("model.weights=weights.pt")), WEIGHTS + "not a PyTorch weights file (…)",
    ),
    "weights_other_architecture": Case(
        _weights(_resnet34_state), "warmup", tuple(sets("model.weights=weights.pt")),
        WEIGHTS + "does not fit a resnet18 encoder: 96 unexpected keys (e.g. layer1.2.bn1.bias, "
        "layer1.2.bn1.num_batches_tracked)",
    ),
    "weights_a_linear_layer": Case(
        _weights(lambda: torch.nn.Linear(512, 10).state_dict()), "warmup",
        tuple(sets("model.weights=weights.pt")),
        WEIGHTS + "does not fit a resnet18 encoder: 120 missing keys (e.g. bn1.bias, "
        "bn1.num_batches_tracked); 2 unexpected keys (e.g. bias, weight)",
    ),
    "weights_not_a_state_dict": Case(
        _weights([1, 2, 3]), "warmup", tuple(sets("model.weights=weights.pt")),
        WEIGHTS + "a list, not a dict, expected a state dict of tensors",
    ),
    "weights_missing": Case(
        lambda e: None, "warmup", tuple(sets("model.weights=weights.pt")),
        WEIGHTS + "no such file (use none, imagenet or the path of a state dict)",
    ),
    # a stage's inputs, deleted or spoilt
    "index_deleted": Case(
        lambda e: (e.project / PACKED / "index.parquet").unlink(), "split", (),
        f"split: error: {PACKED}/index.parquet: table missing; " + RERUN.format(*["prepare"] * 2),
    ),
    "images_deleted": Case(
        lambda e: (e.project / IMAGES_U8).unlink(), "split", (),
        f"split: error: {IMAGES_U8}: image file missing; " + RERUN.format(*["prepare"] * 2),
    ),
    "images_truncated": Case(
        _truncate(IMAGES_U8), "warmup", (),
        f"warmup: error: {IMAGES_U8}: 36,864 bytes, 73,728 expected for 24 images of 32x32 "
        "(truncated or replaced?); " + RERUN.format(*["prepare"] * 2),
    ),
    "index_spoilt": Case(
        lambda e: replace(e.project / PACKED / "index.parquet", b"PAR1 not really"), "split", (),
        f"split: error: {PACKED}/index.parquet: unreadable table (…); "
        + RERUN.format(*["prepare"] * 2),
    ),
    "split_deleted": Case(
        lambda e: (e.project / "data/splits/split.parquet").unlink(), "warmup", (),
        "warmup: error: data/splits/split.parquet: table missing; " + RERUN.format(*["split"] * 2),
    ),
    "model_truncated": Case(
        _truncate("models/warmup.pt"), "s5cl", (),
        "s5cl: error: models/warmup.pt: not a readable model file (…); "
        + RERUN.format(*["warmup"] * 2),
    ),
    # s5cl predict
    "predict_missing_image": Case(
        lambda e: None, "predict", ("--model", "models/warmup.pt", "nowhere.jpg"),
        "s5cl predict: error: nowhere.jpg: cannot read (No such file or directory); check the "
        "path",
    ),
    "predict_bomb": Case(
        lambda e: bomb_png(e.project / "slide.png"), "predict",
        ("--model", "models/warmup.pt", "slide.png"),
        "s5cl predict: error: slide.png: 400,000,000 pixels, over PIL's decompression-bomb limit "
        "of 89,478,485 (a whole slide, not a tile?)",
    ),
    "predict_truncated_model": Case(
        _truncate("models/warmup.pt", 0.3), "predict",
        lambda e: ("--model", "models/warmup.pt", str(e.image())),
        "s5cl predict: error: models/warmup.pt: not a readable model file (…); " + PREDICT_FIX,
    ),
    "predict_random_bytes_model": Case(
        _random_bytes("random.pt", 9000), "predict",
        lambda e: ("--model", "random.pt", str(e.image())),
        "s5cl predict: error: random.pt: not a readable model file (…); " + PREDICT_FIX,
    ),
    "predict_plain_state_dict": Case(
        _plain_state_dict, "predict", lambda e: ("--model", "state.pt", str(e.image())),
        "s5cl predict: error: state.pt: a plain state dict (124 tensors), " + SPOILT_MODEL + "; "
        + PREDICT_FIX,
    ),
    "predict_negative_neighbours": Case(
        lambda e: None, "predict", lambda e: ("--neighbours", "-1", str(e.image())),
        "s5cl predict: error: --neighbours -1: must be 0 or more",
    ),
    "predict_out_is_a_folder": Case(
        lambda e: None, "predict", lambda e: ("--out", "data", str(e.image())),
        "s5cl predict: error: --out data: is a folder; give the path of a .csv file",
    ),
}  # fmt: skip


def _fill(text: str, env: Env) -> str:
    root = str(env.tree.parent.resolve())
    return text.replace("{tree}", str(env.tree.resolve())).replace("{root}", root)


@pytest.mark.parametrize("name", list(CASES))
def test_every_mistake_is_one_line_exit_2_and_loses_nothing(env, capsys, name):
    case = CASES[name]
    case.spoil(env)
    for step in case.first:
        assert stage(step, capsys).code == 0, step
    before = outputs(env.project)
    args = case.args(env) if callable(case.args) else case.args
    if case.command == "predict":
        ran = predict(capsys, *args)
    else:
        ran = stage(case.command, capsys, *args)
    assert ran.code == 2, ran.err
    assert _matches(ran.last, _fill(case.message, env)), ran.last
    assert outputs(env.project) == before  # nothing made before is lost or half-written


# ---------------------------------------------------------------- the file system says no


@contextmanager
def mounted(folder: Path, *options: str):
    """A real mount over `folder` (tmpfs of a few KB, or `folder` bound read-only onto itself);
    the test is skipped where this process cannot mount (not root, or a container)."""
    folder.mkdir(parents=True, exist_ok=True)
    if options[0] == "ro":
        commands = [["mount", "--bind", str(folder), str(folder)],
                    ["mount", "-o", "remount,bind,ro", str(folder)]]  # fmt: skip
    else:
        commands = [["mount", "-t", "tmpfs", "-o", f"size={options[0]}", "tmpfs", str(folder)]]
    for i, command in enumerate(commands):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            if i:
                subprocess.run(["umount", str(folder)], check=True)
            pytest.skip(f"cannot mount here ({done.stderr.strip() or 'not root'})")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


NO_SPACE = "cannot write (No space left on device); free some space and rerun"
READ_ONLY = "cannot write (Read-only file system); the file system is read-only; run the " \
    "project from a writable folder"  # fmt: skip

REFUSED = {
    "prepare_disk_full": ("data/packed", "8k", "prepare", f"prepare: error: {PACKED}: {NO_SPACE}"),
    "prepare_read_only": ("data/packed", "ro", "prepare", f"prepare: error: {PACKED}: {READ_ONLY}"),
    "warmup_disk_full_metrics": ("metrics", "4k", "warmup",
                                 f"warmup: error: metrics/warmup: {NO_SPACE}"),
    "warmup_disk_full_model": ("models", "64k", "warmup",
                               f"warmup: error: models/warmup.pt: {NO_SPACE}"),
    "warmup_read_only": ("models", "ro", "warmup", f"warmup: error: models/warmup.pt: {READ_ONLY}"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(REFUSED))
def test_a_refused_write_names_the_path_and_leaves_no_partial_file(env, capsys, name):
    folder, option, command, message = REFUSED[name]
    before = outputs(env.project)
    with mounted(env.project / folder, option):
        ran = stage(command, capsys)
        assert ran.code == 2, ran.err
        assert ran.last == message
        leftovers = [p for p in (env.project / folder).rglob("*") if p.is_file()]
        assert all(p.stat().st_size > 0 for p in leftovers), leftovers  # no 0-byte file
    assert outputs(env.project) == before  # under the mount, the old outputs are whole


# ---------------------------------------------------------------- no silent change to the data


def _packed(env: Env) -> tuple[pd.DataFrame, np.ndarray]:
    index = pd.read_parquet(f"{PACKED}/index.parquet")
    images = np.fromfile(f"{PACKED}/images.u8", np.uint8).reshape(len(index), 32, 32, 3)
    return index, images


def test_recursive_packs_subfolders_and_warnings_name_what_is_left_out(env, capsys):
    _nested(env)
    (env.tree / "README.txt").write_text("slides from 2024")
    (env.tree / "basophil" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    ran = stage("download", capsys, *sets("data.recursive=true"))
    assert ran.code == 0
    assert (
        f"warning: left out 1 files in {env.tree.resolve()} that are in no class folder, e.g. "
        "README.txt"
    ) in ran.err
    assert (
        "warning: left out 1 hidden files and folders (names starting with '.'), e.g. "
        f"{env.tree.resolve()}/basophil/.DS_Store"
    ) in ran.err
    assert stage("prepare", capsys, *sets("data.recursive=true")).code == 0
    index, _ = _packed(env)
    assert len(index) == 2 * PER_CLASS + 3
    assert (index.loc[index["path"].str.contains("/batch2/"), "class_name"] == "eosinophil").all()


def test_csv_labels_are_trimmed(env, capsys):
    rows = [f" {p} , {p.parent.name} " for p in sorted(env.tree.glob("*/*.jpg"))]
    _csv_root(env, ["path,label", *rows])
    assert stage("download", capsys).code == 0
    assert stage("prepare", capsys).code == 0
    index, _ = _packed(env)
    assert sorted(index["class_name"].unique()) == list(CLASSES)


def test_exif_orientation_is_applied_and_transparency_is_white(env, capsys):
    real = env.real().convert("RGB").crop((0, 0, 300, 200))
    exif = real.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view": what a scanner or phone writes
    real.save(env.tree / "basophil" / "turned.jpg", exif=exif, quality=95)
    clear = Image.new("RGBA", (64, 64), (200, 30, 30, 0))  # fully transparent, red underneath
    clear.save(env.tree / "basophil" / "clear.png")
    assert stage("download", capsys).code == 0
    assert stage("prepare", capsys).code == 0
    index, images = _packed(env)
    turned = int(np.flatnonzero(index["path"].str.endswith("turned.jpg"))[0])
    assert (index["width"][turned], index["height"][turned]) == (200, 300)  # as viewers show it
    shown = np.asarray(
        Image.open(env.tree / "basophil" / "turned.jpg").rotate(-90, expand=True).resize((32, 32))
    )
    assert np.abs(images[turned].astype(int) - shown).mean() < 3  # not the stored orientation
    assert np.abs(images[turned].astype(int) - np.asarray(real.resize((32, 32)))).mean() > 10
    assert (images[int(np.flatnonzero(index["path"].str.endswith("clear.png"))[0])] == 255).all()


def test_weights_load_plain_wrapped_prefixed_and_from_a_model_file(env, tmp_path):
    from torchvision.models import resnet18

    from s5cl.config.params import ModelParams
    from s5cl.model.network import S5CLNet

    source = resnet18()
    torch.nn.init.normal_(source.conv1.weight)
    state = source.state_dict()
    model_file = torch.load("models/warmup.pt", weights_only=False)
    forms = {
        "plain.pth": state,
        "wrapped.pth": {"state_dict": state, "epoch": 9},
        "ddp.pth": {"model": {f"module.{k}": v for k, v in state.items()}},
    }
    for name, content in forms.items():
        torch.save(content, tmp_path / name)
        loaded = S5CLNet(2, ModelParams(weights=str(tmp_path / name))).encoder.state_dict()
        assert torch.equal(loaded["conv1.weight"], state["conv1.weight"]), name
    loaded = S5CLNet(2, ModelParams(weights="models/warmup.pt")).encoder.state_dict()
    assert torch.equal(loaded["conv1.weight"], model_file["model"]["encoder.conv1.weight"])


def test_outputs_get_the_umask_mode(env, capsys):
    old = os.umask(0o022)
    try:
        assert stage("split", capsys).code == 0
        assert stage("prepare", capsys).code == 0
    finally:
        os.umask(old)
    assert (Path("data/splits/split.parquet").stat().st_mode & 0o777) == 0o644
    assert (Path(PACKED).stat().st_mode & 0o777) == 0o755
    assert (Path(PACKED, "index.parquet").stat().st_mode & 0o777) == 0o644


# ---------------------------------------------------------------- files that would run code


class _RunsCode:
    """What a crafted file holds: unpickling it calls os.system (touching `marker`)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted(path: Path, marker: Path) -> None:
    """A model file with every key the project checks for, and a pickled call beside them."""
    from s5cl.model.torch_files import MODEL_KEYS

    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a hard link to the base project's model: never write into it
    torch.save({**dict.fromkeys(MODEL_KEYS), "model": {}, "x": _RunsCode(marker)}, path)


def test_a_file_that_would_run_code_is_refused_wherever_it_is_read(env, capsys, tmp_path):
    """A pickled os.system call in each model file, in a resume checkpoint and in the weights
    file: every stage that reads one, and `s5cl predict`, ends in one line (or, for the
    checkpoint, removes it and starts over), and the call never runs."""
    from s5cl.config.params import load_params
    from s5cl.pipeline import stages
    from s5cl.pipeline.training_stages import run_fingerprint
    from s5cl.training.resume import Resume

    marker = tmp_path / "the-payload-ran"
    params = load_params("params.yaml", [])
    own = Resume("warmup", 1, run_fingerprint(stages.get("warmup"), params)).path
    (env.project / "models/warmup.pt").unlink()  # a killed run: a checkpoint and no model
    _crafted(own, marker)  # the checkpoint warmup's next run would continue from
    ran = stage("warmup", capsys)
    assert ran.code == 0 and not own.exists()
    assert f"note: removed {own}: it holds a call of posix.system, which a checkpoint never " \
           "does; it was not run (docs/security.md); the stage starts over" in ran.err  # fmt: skip

    for name in ("warmup", "s5cl", "final"):
        _crafted(env.project / f"models/{name}.pt", marker)
    _crafted(env.project / "checkpoints/s5cl-000000000000.pt", marker)  # a leftover
    assert stage("download", capsys).code == 0  # the runner's leftover check reads the models first
    reads = {"s5cl": "warmup", "pseudolabel": "s5cl", "retrain": "s5cl", "evaluate": "warmup",
             "report": "retrain", "suggest": "retrain"}  # fmt: skip
    for name, writer in reads.items():
        ran = stage(name, capsys)
        path = "models/final.pt" if writer == "retrain" else f"models/{writer}.pt"
        assert ran.code == 2, ran.err
        assert ran.last == (
            f"{name}: error: {path}: holds a call of posix.system, which a model file of this "
            f"project never does; it was not run (docs/security.md); {RERUN.format(writer, writer)}"
        )
    ran = predict(capsys, "--model", "models/final.pt", str(env.image()))
    assert ran.code == 2 and "models/final.pt: holds a call of posix.system" in ran.last
    weights = env.project / "weights.pth"
    torch.save({"conv1.weight": _RunsCode(marker)}, weights)
    ran = stage("warmup", capsys, *sets(f"model.weights={weights}"))
    assert ran.code == 2 and ran.last == (
        f"warmup: error: model.weights='{weights}': holds a call of posix.system, which a "
        "weights file never needs; it was not run (docs/security.md)"
    )
    assert not marker.exists()


# ---------------------------------------------------------------- stopped, left over, unusual


def test_ctrl_c_in_training_says_where_it_stopped_and_a_rerun_continues(env, capsys, monkeypatch):
    from s5cl.training.methods import ContrastiveObjective

    update, calls = ContrastiveObjective.update, []

    def pressed_on_the_second_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return update(self, *args, **kwargs)

    monkeypatch.setattr(ContrastiveObjective, "update", pressed_on_the_second_step)
    (env.project / "models/warmup.pt").unlink()  # this run's model: the one being made
    ran = stage("warmup", capsys, *sets("checkpoint.every=1"))
    assert ran.code == 2
    kept = next((env.project / "checkpoints").glob("warmup-*.pt")).relative_to(env.project)
    assert ran.last == (
        f"warmup: error: stopped by Ctrl-C at step 2 of 2; the last good checkpoint, {kept} (1 "
        "step done), is kept; rerun the stage to continue"
    )
    monkeypatch.setattr(ContrastiveObjective, "update", update)
    again = stage("warmup", capsys, *sets("checkpoint.every=1"))
    assert again.code == 0 and f"warmup: resuming from {kept} at step 1 of 2" in again.out

    def pressed(params):
        raise KeyboardInterrupt

    monkeypatch.setattr("s5cl.pipeline.stages.function", lambda name: pressed)
    ran = stage("split", capsys)
    assert ran.code == 2 and ran.last == (
        "split: error: stopped by Ctrl-C; its outputs are written whole or not at all, so "
        "nothing half-made is left: rerun it"
    )


def test_a_killed_checkpoint_write_leaves_nothing_after_the_next_stage(env, capsys):
    leftover = env.project / "checkpoints" / ".warmup-0123456789ab.pt.k3j2.tmp"
    leftover.parent.mkdir(exist_ok=True)
    leftover.write_bytes(b"\0" * 4096)  # what SIGKILL during torch.save leaves
    ran = stage("s5cl", capsys, *sets("s5cl.steps=1", "s5cl.batch_labeled=8",
                                      "s5cl.batch_unlabeled=8"))  # fmt: skip
    assert ran.code == 0, ran.err
    assert not leftover.exists()


def test_a_multi_frame_image_is_packed_by_its_first_frame_with_a_warning(env, capsys):
    frames = [env.real().convert("RGB").rotate(90 * i) for i in range(3)]
    gif = env.tree / "basophil" / "animated.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    assert stage("download", capsys).code == 0
    ran = stage("prepare", capsys)
    assert ran.code == 0
    assert (
        f"warning: 1 images hold more than one frame (a multi-page TIFF or an animated GIF), e.g. "
        f"{gif.resolve()} (3 frames): only the first frame of each is packed"
    ) in ran.err


def test_class_names_are_text_in_every_figure(tmp_path):
    """matplotlib would parse `$x^$` as TeX and fail: every figure shows it as written."""
    import pandas as pd

    from s5cl.evaluation.metrics import plot_confusion, plot_per_class_f1
    from s5cl.evaluation.report_page import embedding_map, pseudo_label_curve

    names = ["$x^$", "=1+2", r"a\b$"]
    plot_confusion([[1, 0, 0], [0, 1, 0], [0, 0, 1]], names, "$acc", tmp_path / "c.png")
    scores = {"final": {"per_class_f1": dict(zip(names, [0.5, 0.6, 0.7], strict=True)),
                        "macro_f1": 0.6}}  # fmt: skip
    plot_per_class_f1(scores, names, tmp_path / "f.png")
    rng = np.random.default_rng(0)
    assert embedding_map(rng.random((30, 4)), np.arange(30) % 3, np.arange(30) < 3, names, 0)
    pseudo = pd.DataFrame({"label": [0, 1, 2], "confidence": [0.9, 0.5, 0.95],
                           "true_label": [-1, -1, -1]})  # fmt: skip
    assert pseudo_label_curve(pseudo, 0.8, names)
    assert (tmp_path / "c.png").stat().st_size > 1000 and (tmp_path / "f.png").exists()


def test_a_second_driver_in_the_same_folder_is_refused(env, tmp_path):
    """`dvc repro` running here, then a stage started by snakemake: one line, exit 2, nothing
    touched; once dvc has ended, its record is stale and snakemake's stage runs. (The drivers
    are stood in for by processes named dvc and snakemake: the check reads names from /proc.)"""
    from s5cl.pipeline.runner import _process

    script = tmp_path / "split_stage.py"
    script.write_text("from s5cl.pipeline.runner import run_stage\nrun_stage('split')\n")
    inner = f"{sys.executable} {script}; exit $?"  # two commands: bash waits, stays the parent
    under_snakemake = ["bash", "-c", f"exec -a snakemake bash -c '{inner}'"]
    dvc = subprocess.Popen(["bash", "-c", "exec -a dvc sleep 120"])
    try:
        for _ in range(100):  # until the exec has happened
            found = _process(dvc.pid)
            if found and found[0][0] == "dvc":
                break
            time.sleep(0.05)
        record = {"driver": "dvc", "pid": dvc.pid, "start": found[2]}
        (env.project / ".s5cl-driver.json").write_text(json.dumps(record))
        before = outputs(env.project)
        ran = subprocess.run(under_snakemake, cwd=env.project, capture_output=True, text=True)
        assert ran.returncode == 2 and "Traceback" not in ran.stderr
        assert ran.stderr.strip().splitlines()[-1] == (
            f"split: error: dvc (pid {dvc.pid}) is running the pipeline in this folder; two "
            "drivers at once would mix their outputs: wait for it to end, or stop it "
            "(.s5cl-driver.json records it)"
        )
        assert outputs(env.project) == before
    finally:
        dvc.kill()
        dvc.wait()
    ran = subprocess.run(under_snakemake, cwd=env.project, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert json.loads((env.project / ".s5cl-driver.json").read_text())["driver"] == "snakemake"


def test_a_bad_snakemake_overlay_is_the_same_one_line(project):
    """--configfile and --config go through the stages' own checks: one line, exit 2, not
    Snakemake's stack of the Snakefile's lines."""
    from .conftest import run

    (project / "overlay.yaml").write_text("s5cl: {tau_u: -1}\n")
    said = "snakemake: error: bad parameter: "
    cases = [
        (["--configfile", "overlay.yaml"], said + "s5cl.tau_u = -1: Input should be greater "
         "than 0"),
        (["--config", "seed=yes"], said + "seed = 'yes': Input should be a valid integer, unable "
         "to parse string as an integer"),
    ]  # fmt: skip
    for args, expected in cases:
        ran = run(["snakemake", "-n", "--cores", "1", *args], project, check=False)
        assert ran.returncode == 2 and "Traceback" not in ran.stderr, ran.stderr
        assert ran.stderr.strip().splitlines()[-1] == expected


def test_dvc_sends_no_analytics_from_the_project(tmp_path, monkeypatch):
    """DVC posts usage to analytics.dvc.org after each command unless told not to; the
    project's .dvc/config tells it not to (docs/security.md), asked of DVC's own check."""
    from dvc.analytics import is_enabled

    monkeypatch.delenv("DVC_NO_ANALYTICS")  # tests/__init__.py sets it for the whole suite
    other = tmp_path / "other"  # a DVC project without the project's config: DVC would send
    other.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run([VENV_BIN / "dvc", "init", "--no-scm", "-q"], cwd=other, env=env, check=True)
    monkeypatch.chdir(other)
    assert is_enabled()
    monkeypatch.chdir(ROOT)
    assert not is_enabled()
