"""The batched augmentations against per-image references: torchvision's functional transforms
and scikit-image's rgb2hed/hed2rgb, on real tiles and cells, with the same parameters."""

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from s5cl.config.params import AugmentParams
from s5cl.data.augment import (
    EAGER,
    Affine,
    ColorFactors,
    FlipRotate,
    StainShift,
    affine_theta,
    apply_color,
    apply_flip_rotate,
    apply_stains,
    crop_theta,
    flip_rotate_theta,
    fused_kernels,
    hed_to_rgb,
    normalize,
    pixel_kernels,
    rgb_to_hed,
    sample_strong,
    sampling_grid,
    strong_view,
    to_float,
    training_views,
    warp,
    weak_view,
)
from s5cl.data.packing import decode_file

from .conftest import PBC, SHARED, needs_shared

SIZE = 48


def _digits(n: int = 8, size: int = 32) -> torch.Tensor:
    """n copies of one real digit: any difference between outputs comes from augmentation."""
    from sklearn.datasets import load_digits

    image = load_digits().images[0] / 16.0
    x = torch.tensor(image, dtype=torch.float32).expand(3, 8, 8)
    x = torch.nn.functional.interpolate(x[None], size=size, mode="bilinear")
    return x.expand(n, 3, size, size).contiguous()


def _real_batch() -> torch.Tensor:
    """Four H&E tiles (one per tissue class) and four blood cells, SIZE x SIZE, in [0, 1]."""
    tiles = [next((SHARED / "crc-tiles" / c).glob("*.png")) for c in ("ADI", "LYM", "STR", "TUM")]
    cells = [next((PBC / c).glob("*.jpg")) for c in ("basophil", "eosinophil", "ig", "platelet")]
    arrays = [decode_file(str(path), SIZE)[0] for path in tiles + cells]
    return to_float(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous())


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("view", [weak_view, strong_view])
def test_views_keep_shape_dtype_range(view):
    x = _digits()
    out = view(x, AugmentParams(flip_rotate=True), _gen())
    assert out.shape == x.shape
    assert out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("view", [weak_view, strong_view])
def test_parameters_are_sampled_per_image(view):
    out = view(_digits(16), AugmentParams(), _gen())
    distinct = {tuple(np.round(row.numpy(), 4)) for row in out.flatten(1)}
    assert len(distinct) >= 12, "copies of one image should get different augmentations"


def test_same_seed_same_views():
    a = strong_view(_digits(), AugmentParams(), _gen(5))
    b = strong_view(_digits(), AugmentParams(), _gen(5))
    assert torch.equal(a, b)


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
@pytest.mark.parametrize("chunk", [None, 3])
def test_training_views_are_the_views_of_each_batch_normalised_whatever_the_chunk(chunk, fused):
    """The eager weak_view / strong_view are the oracle for the training path: chunked, fused
    by torch.compile, normalised before the warp rather than after, written in place."""
    from sklearn.datasets import load_digits

    u8 = torch.from_numpy((load_digits().images[:12] * 15).astype(np.uint8))
    u8 = torch.nn.functional.interpolate(u8[:, None].expand(12, 3, 8, 8).float(), size=16)
    u8 = u8.to(torch.uint8)
    labeled, unlabeled = u8[:4], u8[4:]
    cfg = AugmentParams(flip_rotate=True)
    mean, std = [0.2, 0.3, 0.4], [0.5, 0.6, 0.7]
    kernels = pixel_kernels(fused)
    assert kernels.fused == fused, "this machine should compile the fused kernels"
    out = training_views([labeled, unlabeled], cfg, _gen(3), mean, std, chunk, True, kernels)
    gen = _gen(3)
    expected = []
    for batch in (labeled, unlabeled):
        expected += [weak_view(to_float(batch), cfg, gen), strong_view(to_float(batch), cfg, gen)]
    expected = normalize(torch.cat(expected), mean, std)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_fused_kernels_fall_back_to_eager_with_a_warning_where_they_cannot_compile():
    if torch.cuda.is_available():
        pytest.skip("this machine compiles for CUDA: no failure to provoke")
    with pytest.warns(UserWarning, match="fuse_augment: torch.compile failed on cuda"):
        kernels = fused_kernels("cuda")
    assert kernels is EAGER


def test_warp_into_out_is_warp():
    x = torch.rand(4, 3, 12, 12, generator=_gen(6))
    theta = sample_strong(4, AugmentParams(flip_rotate=True), _gen(7)).theta
    out = torch.empty(8, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    warp(x, theta, out=out[4:])
    assert torch.equal(out[4:], warp(x, theta))


@needs_shared()
def test_flips_and_quarter_turns_match_torchvision():
    x = _real_batch()
    p = FlipRotate(
        hflip=torch.tensor([0, 1, 0, 1, 0, 1, 1, 0]).bool(),
        vflip=torch.tensor([0, 0, 1, 1, 1, 0, 1, 0]).bool(),
        quarter=torch.tensor([0, 1, 2, 3, 3, 2, 1, 0]),
    )
    out = apply_flip_rotate(x, p)
    for i, image in enumerate(x):
        ref = TF.hflip(image) if p.hflip[i] else image
        ref = TF.vflip(ref) if p.vflip[i] else ref
        ref = TF.rotate(ref[None], 90.0 * int(p.quarter[i]), InterpolationMode.NEAREST)[0]
        assert torch.equal(out[i], ref), f"image {i}"


def test_sampling_grid_is_torch_affine_grid():
    theta = sample_strong(6, AugmentParams(flip_rotate=True), _gen(4)).theta
    expected = torch.nn.functional.affine_grid(theta[:, :2], [6, 3, 20, 20], align_corners=False)
    torch.testing.assert_close(sampling_grid(theta, (20, 20)), expected, atol=1e-6, rtol=0)


def test_flips_and_quarter_turns_as_a_grid_are_the_same_transform():
    """The strong view folds them into its sampling grid; all 16 flag combinations."""
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images[:16] / 16.0, dtype=torch.float32)
    x = torch.nn.functional.interpolate(images[:, None].expand(16, 3, 8, 8), size=24)
    code = torch.arange(16)
    p = FlipRotate(hflip=code % 2 == 1, vflip=code // 2 % 2 == 1, quarter=code // 4)
    torch.testing.assert_close(
        warp(x, flip_rotate_theta(p)), apply_flip_rotate(x, p), atol=1e-5, rtol=0
    )


@needs_shared()
def test_colour_jitter_matches_torchvision_adjust_functions():
    x = _real_batch()
    gen = _gen(1)
    c = ColorFactors(
        brightness=0.6 + 0.8 * torch.rand(8, generator=gen),
        contrast=0.6 + 0.8 * torch.rand(8, generator=gen),
        saturation=0.6 + 0.8 * torch.rand(8, generator=gen),
        hue=torch.rand(8, generator=gen) - 0.5,  # the whole range torchvision allows
    )
    out = apply_color(x, c)
    for i, image in enumerate(x):
        ref = TF.adjust_brightness(image, float(c.brightness[i]))
        ref = TF.adjust_contrast(ref, float(c.contrast[i]))
        ref = TF.adjust_saturation(ref, float(c.saturation[i]))
        ref = TF.adjust_hue(ref, float(c.hue[i]))
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0, msg=f"image {i}")


@needs_shared()
def test_stain_matrices_match_scikit_image():
    from skimage.color import hed2rgb, rgb2hed

    x = _real_batch()
    hed = rgb_to_hed(x)
    for i, image in enumerate(x.permute(0, 2, 3, 1).double().numpy()):
        ours = hed[i].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(np.maximum(ours, 0), rgb2hed(image), atol=1e-5)
        stains = np.maximum(ours, 0)  # skimage's densities are never negative
        back = hed_to_rgb(torch.from_numpy(stains).permute(2, 0, 1)[None].float())
        np.testing.assert_allclose(back[0].permute(1, 2, 0).numpy(), hed2rgb(stains), atol=1e-5)


@needs_shared()
def test_stain_jitter_matches_the_reference_hed_jitter():
    """The reference's HEDJitter: hed2rgb(alpha * rgb2hed(x) + beta), per image. skimage clips
    negative densities first; we do not (so white stays white), so compare where none is."""
    from skimage.color import hed2rgb, rgb2hed

    x = _real_batch()
    gen = _gen(2)
    s = StainShift(
        0.9 + 0.2 * torch.rand(8, 3, generator=gen), 0.1 * torch.rand(8, 3, generator=gen) - 0.05
    )
    out = apply_stains(x, s)
    unclipped = (rgb_to_hed(x) >= 0).all(1)  # B x H x W
    assert unclipped.float().mean() > 0.3, "the comparison must cover a real part of the images"
    for i, image in enumerate(x.permute(0, 2, 3, 1).double().numpy()):
        ref = hed2rgb(rgb2hed(image) * s.alpha[i].double().numpy() + s.beta[i].double().numpy())
        ours = out[i].permute(1, 2, 0).numpy()
        mask = unclipped[i].numpy()
        np.testing.assert_allclose(ours[mask], ref[mask], atol=1e-5)
    no_jitter = StainShift(torch.ones(8, 3), torch.zeros(8, 3))
    torch.testing.assert_close(apply_stains(x, no_jitter), x.clamp_min(1e-6), atol=1e-5, rtol=0)


@needs_shared()
def test_crop_matches_torchvision_resized_crop():
    x = _real_batch()
    boxes = [(0, 0, SIZE, SIZE), (5, 3, 30, 40), (10, 12, 24, 24), (17, 0, 31, 20)] * 2
    fractions = torch.tensor(boxes, dtype=torch.float64) / SIZE  # left, top, width, height
    out = warp(x, crop_theta(fractions))
    for i, (left, top, width, height) in enumerate(boxes):
        ref = TF.resized_crop(
            x[i],
            top,
            left,
            height,
            width,
            [SIZE, SIZE],
            InterpolationMode.BILINEAR,
            antialias=False,
        )
        # the outermost pixels differ by design: torchvision cuts the box out first, we sample
        # the whole image, so the box's edge pixels interpolate with their real neighbours
        inner = (slice(None), slice(1, -1), slice(1, -1))
        torch.testing.assert_close(out[i][inner], ref[inner], atol=1e-5, rtol=0, msg=f"box {i}")


@needs_shared()
def test_affine_matches_torchvision_affine():
    from torchvision.transforms.functional import _get_inverse_affine_matrix

    x = _real_batch()
    params = [  # angle, translate (pixels), scale, shear (degrees)
        (0.0, (0, 0), 1.0, (0.0, 0.0)),
        (9.0, (0, 0), 1.0, (0.0, 0.0)),
        (-7.0, (2, -3), 1.05, (0.0, 0.0)),
        (4.0, (-1, 2), 0.95, (6.0, -8.0)),
    ] * 2
    a = Affine(
        angle=torch.tensor([p[0] for p in params], dtype=torch.float64),
        translate=torch.tensor([p[1] for p in params], dtype=torch.float64) / SIZE,
        scale=torch.tensor([p[2] for p in params], dtype=torch.float64),
        shear=torch.tensor([p[3] for p in params], dtype=torch.float64),
    )
    theta = affine_theta(a)
    out = warp(x, theta, padding="zeros")
    for i, (angle, translate, scale, shear) in enumerate(params):
        inverse = _get_inverse_affine_matrix([0.0, 0.0], angle, list(translate), scale, list(shear))
        expected = np.array(inverse).reshape(2, 3) * np.array([1, 1, 2 / SIZE])  # pixels -> [-1, 1]
        np.testing.assert_allclose(theta[i, :2].numpy(), expected, atol=1e-12)
        ref = TF.affine(
            x[i], angle, list(translate), scale, list(shear), InterpolationMode.BILINEAR
        )
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0, msg=f"image {i}")


@needs_shared()
def test_hed_round_trip_without_jitter_is_identity_on_real_cells():
    x = _real_batch()
    same = apply_stains(x, StainShift(torch.ones(8, 3), torch.zeros(8, 3)))
    assert torch.allclose(same, x, atol=2e-3)
    shifted = apply_stains(x, StainShift(torch.full((8, 3), 1.05), torch.zeros(8, 3)))
    assert (shifted - x).abs().mean() > 1e-3


def test_wrong_input_is_refused():
    with pytest.raises(TypeError, match="uint8"):
        to_float(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        rgb_to_hed(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="square"):
        warp(torch.zeros(1, 3, 4, 6), torch.eye(3)[None])
