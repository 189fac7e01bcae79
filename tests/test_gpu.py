"""The CUDA paths: what runs only on a GPU must give what the CPU gives (marker `gpu`).

Without CUDA they skip. `bench/gpu_check.py` runs them on the GPU; its `--smoke` mode runs them
on the CPU (S5CL_GPU_TESTS_ON=cpu), so they cannot rot between GPU loans. The measurements a
test makes (how far a resumed run lands from an uninterrupted one) go to the JUnit XML through
`record_property`, where gpu_check.py reads them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

# cuBLAS is deterministic only with a fixed workspace, which must be set before CUDA starts.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch

from s5cl import layout
from s5cl.config.params import AugmentParams, ComputeParams
from s5cl.data.augment import (
    normalize,
    pixel_kernels,
    strong_view,
    to_float,
    training_views,
    weak_view,
)
from s5cl.data.packed import PackedDataset
from s5cl.model.network import S5CLNet
from s5cl.training.device import configure

from .conftest import in_process, stop_after_first_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ON = os.environ.get("S5CL_GPU_TESTS_ON", "cuda")
DEVICE = torch.device(ON)
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        ON == "cuda" and not torch.cuda.is_available(),
        reason="no CUDA device (bench/gpu_check.py --smoke runs these on the CPU)",
    ),
]


def _digits_uint8(count: int, size: int) -> torch.Tensor:
    """`count` real digits as a count x 3 x size x size uint8 batch."""
    from sklearn.datasets import load_digits

    u8 = torch.from_numpy((load_digits().images[:count] * 15).astype(np.uint8))
    x = torch.nn.functional.interpolate(u8[:, None].expand(count, 3, 8, 8).float(), size=size)
    return x.to(torch.uint8)


def test_bf16_autocast_keeps_the_losses_and_the_classifier_in_fp32():
    """`compute.precision: auto` is bf16 on a GPU with bf16 units; the convolutions run in it,
    the embedding, the classifier's weights and logits, and the loss stay fp32."""
    from s5cl.training.losses import supcon

    precision = "auto" if DEVICE.type == "cuda" else "bf16"  # auto is fp32 on a CPU
    torch.manual_seed(0)
    model = S5CLNet(num_classes=4)
    configure(model, ComputeParams(precision=precision), DEVICE)
    assert model.autocast is torch.bfloat16
    inside = []
    model.encoder.layer1.register_forward_hook(lambda m, i, out: inside.append(out.dtype))
    x = normalize(to_float(_digits_uint8(8, 32)), [0.3] * 3, [0.3] * 3).to(DEVICE)
    emb = model.embed(x.contiguous(memory_format=torch.channels_last))
    logits = model.classifier(emb)
    y = torch.arange(4, device=DEVICE)  # images 4-7 stand for a second view of images 0-3
    loss = supcon(emb, y, 0.1) + torch.nn.functional.cross_entropy(logits, torch.cat([y, y]))
    assert inside == [torch.bfloat16]
    assert emb.dtype == logits.dtype == loss.dtype == torch.float32
    assert model.classifier.weight.dtype == torch.float32
    loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)


def test_the_fused_views_compiled_for_the_device_equal_the_eager_ones():
    """The per-pixel chains compiled for this device (Triton on a GPU) against the eager
    weak_view / strong_view, within 1e-5."""
    u8 = _digits_uint8(12, 32).to(DEVICE)
    labeled, unlabeled = u8[:4], u8[4:]
    cfg = AugmentParams(flip_rotate=True)
    mean, std = [0.2, 0.3, 0.4], [0.5, 0.6, 0.7]
    kernels = pixel_kernels(True, DEVICE)
    assert kernels.fused, "torch.compile should build the fused kernels on this device"
    out = training_views(
        [labeled, unlabeled], cfg, torch.Generator().manual_seed(3), mean, std, None, True, kernels
    )
    gen = torch.Generator().manual_seed(3)
    expected = []
    for batch in (labeled, unlabeled):
        expected += [weak_view(to_float(batch), cfg, gen), strong_view(to_float(batch), cfg, gen)]
    expected = normalize(torch.cat(expected), mean, std)
    assert out.device.type == DEVICE.type
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_pinned_non_blocking_batches_equal_plain_copies(tmp_path):
    """PackedDataset.batch pins each gathered block and copies it asynchronously: twenty
    batches in flight at once, then one synchronisation, must equal blocking copies."""
    images = _digits_uint8(200, 32).permute(0, 2, 3, 1).contiguous().numpy()
    mm = np.memmap(tmp_path / "images.u8", np.uint8, "w+", shape=images.shape)
    mm[:] = images
    data = PackedDataset(mm, np.zeros(200, dtype=np.int64), ["a"], [0.2] * 3, [0.3] * 3)
    rng = np.random.default_rng(0)
    rows = [np.sort(rng.choice(200, 32, replace=False)) for _ in range(20)]
    batches = [data.batch(r, DEVICE) for r in rows]  # all in flight
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    for r, batch in zip(rows, batches, strict=True):
        plain = torch.from_numpy(images[r]).to(DEVICE).permute(0, 3, 1, 2)
        assert torch.equal(batch, plain)


def _weights(stage: str) -> dict[str, torch.Tensor]:
    return torch.load(layout.model_path(stage), weights_only=False, map_location="cpu")["model"]


def _metrics(stage: str) -> dict[str, bytes]:
    folder = layout.METRICS / stage
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_checkpoint_written_on_the_device_resumes_there_to_the_same_model(
    tmp_path, monkeypatch, record_property
):
    """Train s5cl 6 steps on the device; again, stopped after the checkpoint at step 3 and
    resumed. With torch.use_deterministic_algorithms the two must agree bit for bit where
    CUDA has deterministic kernels for every op (warn_only: where it has not, the difference
    is measured, reported, and must stay within 1e-4)."""
    project = tmp_path / "project"  # the stage functions need only params.yaml and labels/
    project.mkdir()
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    shutil.copytree(ROOT / "labels", project / "labels")
    monkeypatch.setenv("S5CL_DEVICE", ON)
    sets = ("data.size=16", "warmup.steps=2", "warmup.eval_every=2", "s5cl.steps=6",
            "s5cl.eval_every=2", "s5cl.batch_unlabeled=16", "checkpoint.every=3",
            "compute.fuse_augment=false")  # fmt: skip
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        in_process(project, monkeypatch, "download", "prepare", "split", "warmup", "s5cl",
                   sets=sets)  # fmt: skip
        uninterrupted, metrics = _weights("s5cl"), _metrics("s5cl")
        stop_after_first_checkpoint(project, monkeypatch, "s5cl", sets)
        assert len(list(layout.CHECKPOINTS.glob("s5cl-*.pt"))) == 1
        in_process(project, monkeypatch, "s5cl", sets=sets)
        resumed = _weights("s5cl")
    finally:
        torch.use_deterministic_algorithms(deterministic)
    diff = max((resumed[k].float() - uninterrupted[k].float()).abs().max().item()
               for k in uninterrupted)  # fmt: skip
    bitwise = all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    record_property("resume_bitwise", bitwise)
    record_property("resume_max_abs_weight_difference", diff)
    if DEVICE.type == "cpu":
        assert bitwise, "on the CPU a resumed run is bitwise the uninterrupted one"
    assert diff <= 1e-4, diff
    if bitwise:
        assert _metrics("s5cl") == metrics
