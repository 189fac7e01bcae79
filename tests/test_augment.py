import numpy as np
import pytest
import torch

from s5cl.augment import hed_jitter, strong_view, to_float, weak_view
from s5cl.datasets.prepare import decode_file
from s5cl.params import AugmentParams

from .conftest import PBC, needs_shared


def _batch(n: int = 8, size: int = 32) -> torch.Tensor:
    """n copies of one real image: any difference between outputs comes from augmentation."""
    from sklearn.datasets import load_digits

    image = load_digits().images[0] / 16.0
    x = torch.tensor(image, dtype=torch.float32).expand(3, 8, 8)
    x = torch.nn.functional.interpolate(x[None], size=size, mode="bilinear")
    return x.expand(n, 3, size, size).contiguous()


@pytest.mark.parametrize("view", [weak_view, strong_view])
def test_views_keep_shape_dtype_range(view):
    x = _batch()
    out = view(x, AugmentParams(), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("view", [weak_view, strong_view])
def test_parameters_are_sampled_per_image(view):
    out = view(_batch(16), AugmentParams(), torch.Generator().manual_seed(0))
    flat = out.flatten(1)
    distinct = {tuple(np.round(row.numpy(), 4)) for row in flat}
    assert len(distinct) >= 12, "copies of one image should get different augmentations"


def test_same_seed_same_views():
    a = strong_view(_batch(), AugmentParams(), torch.Generator().manual_seed(5))
    b = strong_view(_batch(), AugmentParams(), torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


@needs_shared()
def test_hed_round_trip_without_jitter_is_identity_on_real_cells():
    path = next((PBC / "eosinophil").glob("*.jpg"))
    array, _ = decode_file(str(path), 64)
    x = to_float(torch.from_numpy(array.copy()).permute(2, 0, 1)[None])
    tiny = hed_jitter(x, 1e-9, torch.Generator().manual_seed(0))
    assert torch.allclose(tiny, x, atol=2e-3)
    jittered = hed_jitter(x, 0.05, torch.Generator().manual_seed(0))
    assert (jittered - x).abs().mean() > 1e-3


def test_uint8_required():
    with pytest.raises(TypeError, match="uint8"):
        to_float(torch.zeros(1, 3, 4, 4))
