"""The benchmarks still run: their own code at toy sizes (timings are theirs to print, not ours
to assert)."""

import importlib.util
import subprocess
import sys

import torch

from .conftest import PBC, ROOT, needs_shared


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_shared()
def test_prepare_scaling_runs_and_prints_its_table():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench/prepare_scaling.py"), "--sizes", "16",
         "--workers", "1", "--count", "100"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[2:]}
    assert rows["pbc-240"][2] == str(len(list(PBC.glob("*/*.jpg"))))
    assert rows["synthetic-100"][2] == "100"
    assert rows["ratio"][1] == "16"


@needs_shared()
def test_speed_benchmark_packs_tiles_and_trains_with_the_pipelines_loop(tmp_path):
    speed = _load("speed")
    tiles = speed.png_tiles(tmp_path / "tiles", 8)  # 8 cells, one per class, as 224 px PNGs
    assert len(list(tiles.glob("*/*.png"))) == 8
    data = speed.pack(tiles, tmp_path)
    assert data.images.shape == (8, speed.SIZE, speed.SIZE, 3)
    model = speed.S5CLNet(data.num_classes)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    speed.our_training(data, model, 8, 8)(1)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
