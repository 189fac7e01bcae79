"""s5cl.api: the docs' notebook-length example runs as written, and the API trains the weights
a pipeline run trains from the same images, roles and params."""

import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from s5cl import api
from s5cl.config.params import load_params
from s5cl.data.packed import PackedDataset
from s5cl.errors import UserError

from .conftest import ROOT, TinyRun


@pytest.mark.slow(30)
def test_the_docs_example_runs_s5cl_on_digits_in_memory():
    page = (ROOT / "docs/api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    assert len(blocks) == 1
    ran = subprocess.run([sys.executable, "-c", blocks[0]], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr[-3000:]
    said = ran.stdout
    for line in ("warmup: loss", "s5cl: loss", "pseudo-labels:", "retrain: loss"):
        assert line in said, said
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", said).group(1))
    assert accuracy > 0.5, said  # 5 labels per class; chance is 0.1


def test_the_api_trains_the_warmup_a_dvc_repro_trained(tiny_repro: TinyRun):
    """Same packed images, same split, same params: every tensor of the warm-up model equals
    the one `dvc repro` wrote (the API is the pipeline's training, not another one)."""
    project = tiny_repro.project
    params = load_params(project / "params.yaml")
    packed = PackedDataset.open(project / "data/packed" / params.data.name)
    split = pd.read_parquet(project / "data/splits/split.parquet")
    model = api.new_model(params, packed)
    api.train_phase("warmup", model, params, packed, split)
    written = torch.load(project / "models/warmup.pt", weights_only=True)["model"]
    trained = model.state_dict()
    assert written.keys() == trained.keys()
    for key, tensor in written.items():
        assert torch.equal(tensor, trained[key].cpu()), key


def test_in_memory_data_and_roles_are_checked():
    grey = np.zeros((4, 8, 8), np.uint8)
    data = api.in_memory(grey, [0, 1, 0, 1], ["a", "b"])
    assert data.images.shape == (4, 8, 8, 3) and data.class_names == ["a", "b"]
    with pytest.raises(UserError, match="uint8"):
        api.in_memory(grey.astype(float), [0, 1, 0, 1])
    with pytest.raises(UserError, match="3 labels for 4 images"):
        api.in_memory(grey, [0, 1, 0])
    with pytest.raises(UserError, match="at most one role"):
        api.split_roles(4, labeled=[0, 1], unlabeled=[1, 2])
    split = api.split_roles(4, labeled=[3, 0], test=[1])
    assert list(api.split_rows(split, "labeled")) == [0, 3]
    with pytest.raises(UserError, match=r"unknown parameter s5cl\.tau_uu"):
        api.params_from({"s5cl": {"tau_uu": 0.5}})
