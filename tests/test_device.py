"""How the network runs: bf16 autocast and torch.compile change speed, not what is learned."""

from pathlib import Path

import numpy as np
import torch

from s5cl.config.params import ComputeParams, validate
from s5cl.data.augment import normalize, to_float
from s5cl.data.packed import PackedDataset
from s5cl.model.network import S5CLNet, embed_and_predict
from s5cl.pipeline import stages
from s5cl.training.device import autocast_dtype, configure, cpu_has_bf16
from s5cl.training.loop import seed_everything
from s5cl.training.methods import make_objective

from .conftest import digit_views

CPU = torch.device("cpu")


def test_auto_precision_on_the_cpu_is_bf16_only_with_bf16_units_and_images_of_64_px():
    assert autocast_dtype("auto", CPU) is None
    assert autocast_dtype("auto", CPU, 32) is None  # no gain at 32 px: the default stays fp32
    native = torch.bfloat16 if cpu_has_bf16() else None
    assert autocast_dtype("auto", CPU, 64) is native and autocast_dtype("auto", CPU, 224) is native
    assert autocast_dtype("fp32", CPU, 224) is None
    assert autocast_dtype("bf16", CPU) is torch.bfloat16
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert cpu_has_bf16() == any(f in flags.split() for f in ("amx_bf16", "avx512_bf16"))


def test_bf16_runs_the_convolutions_in_bf16_and_still_learns():
    seed_everything(0)
    x, y_l = digit_views()
    model = S5CLNet(num_classes=10)
    configure(model, ComputeParams(precision="bf16"), CPU)
    seen = []
    model.encoder.layer1.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    assert model.embed(x).dtype == torch.float32, "losses must see fp32"
    assert seen == [torch.bfloat16]

    params = validate({"method": "supcon", "compute": {"precision": "bf16"}})
    objective = make_objective(stages.get("s5cl").phase, model.train(), params, 10)
    x_l = x[: 2 * len(y_l)]  # bf16 is emulated on this CPU: labeled views only, to stay quick
    losses = [objective.update(x_l, y_l, None, step)[0]["loss"] for step in range(6)]
    assert losses[-1] < losses[0], losses


def test_inference_reads_the_memmap_in_batches_and_agrees_with_the_whole_set_at_once(tmp_path):
    from sklearn.datasets import load_digits

    images = np.repeat((load_digits().images[:50, :, :, None] * 15).astype(np.uint8), 3, axis=3)
    mm = np.memmap(tmp_path / "images.u8", np.uint8, "w+", shape=images.shape)
    mm[:] = images
    data = PackedDataset(mm, np.zeros(50, dtype=np.int64), ["a"], [0.2] * 3, [0.3] * 3)
    model = S5CLNet(num_classes=3)
    configure(model, ComputeParams(), CPU)
    rows = np.arange(3, 50, 2)
    embeddings, probs = embed_and_predict(model, data, rows, CPU, batch_size=7)
    with torch.no_grad():
        x = normalize(
            to_float(torch.from_numpy(images[rows]).permute(0, 3, 1, 2)), [0.2] * 3, [0.3] * 3
        )
        expected = model.eval().embed(x)
    np.testing.assert_allclose(embeddings, expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(
        probs, model.classifier(expected).softmax(1).detach().numpy(), atol=1e-5
    )


def test_compiled_encoder_matches_eager_and_keeps_checkpoint_keys():
    torch.manual_seed(0)
    model = S5CLNet(num_classes=4)
    configure(model, ComputeParams(), CPU)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    model.eval()
    eager = model(x)
    keys = list(model.state_dict())
    configure(model, ComputeParams(compile=True), CPU)
    compiled = model(x)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)
    assert list(model.state_dict()) == keys
