"""Weak and strong views of a whole batch at once, with parameters sampled per image.

Images are B x 3 x H x W float tensors in [0, 1] on any device (the training loop moves uint8
batches there first). Each augmentation is split in two: `sample_*` draws its per-image
parameters on the CPU from the caller's generator (so a seed gives the same views on any
device), and a pure function applies them to the batch as tensor operations, with no Python
loop over images. The pure functions follow torchvision's and scikit-image's definitions and
are tested image by image against them (tests/test_augment.py). Sampling per image fixes a
defect of the reference code, which drew one set of parameters for a whole batch.

    weak    flips + 90° rotations, colour jitter        (torchvision ColorJitter(s, s, s, s))
    strong  flips + 90° rotations, HED stain jitter,    (scikit-image rgb2hed / hed2rgb)
            random resized crop o random affine         (one sampling grid, one resampling)
"""

from __future__ import annotations

import functools
import logging
import math
import typing
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from s5cl.config.params import AugmentParams

# Ruifrok & Johnston stain vectors, as in scikit-image's rgb2hed / hed2rgb.
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
_LOG_EPS = math.log(1e-6)


def _uniform(gen: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen)


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """B values -> B x 1 x 1 x 1 on `like`'s device and dtype, to broadcast over a batch."""
    return values.to(like.device, like.dtype).view(-1, 1, 1, 1)


def _check_batch(x: torch.Tensor, square: bool = False) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a B x 3 x H x W batch, got shape {tuple(x.shape)}")
    if square and x.shape[-1] != x.shape[-2]:
        raise ValueError(f"expected square images, got {tuple(x.shape[-2:])}")


# ---------------------------------------------------------------- flips and 90° rotations


@dataclass
class FlipRotate:
    hflip: torch.Tensor  # B bool
    vflip: torch.Tensor  # B bool
    quarter: torch.Tensor  # B int in 0..3: counter-clockwise quarter turns (torch.rot90)


def sample_flip_rotate(b: int, gen: torch.Generator) -> FlipRotate:
    return FlipRotate(
        torch.rand(b, generator=gen) < 0.5,
        torch.rand(b, generator=gen) < 0.5,
        torch.randint(0, 4, (b,), generator=gen),
    )


def apply_flip_rotate(x: torch.Tensor, p: FlipRotate) -> torch.Tensor:
    """Horizontal flip, then vertical flip, then rotation, each where the image's flag says.

    Images sharing one of the 16 flag combinations are transformed together: one strided copy
    of each image, whatever the batch size."""
    _check_batch(x, square=True)
    code = (p.hflip.long() + 2 * p.vflip.long() + 4 * p.quarter).to(x.device)
    out = torch.empty_like(x)
    for value in code.unique().tolist():
        group = (code == value).nonzero().squeeze(1)
        y = x[group]
        if value & 1:
            y = y.flip(-1)
        if value & 2:
            y = y.flip(-2)
        out[group] = torch.rot90(y, value >> 2, (-2, -1))
    return out


def flip_rotate_theta(p: FlipRotate) -> torch.Tensor:
    """The grid matrix of apply_flip_rotate (B x 3 x 3, entries 0 and ±1, so bilinear sampling
    lands on pixel centres): lets the strong view fold it into its one resampling."""
    b = len(p.hflip)
    hflip = torch.eye(3).repeat(b, 1, 1)
    hflip[:, 0, 0] = 1 - 2 * p.hflip.float()
    vflip = torch.eye(3).repeat(b, 1, 1)
    vflip[:, 1, 1] = 1 - 2 * p.vflip.float()
    quarter = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    powers = torch.stack([torch.linalg.matrix_power(quarter, k) for k in range(4)])
    return hflip @ vflip @ powers[p.quarter]


# ---------------------------------------------------------------- colour jitter


@dataclass
class ColorFactors:
    brightness: torch.Tensor  # B factors, 1 = unchanged
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor  # B shifts in turns, 0 = unchanged


def sample_color(b: int, strength: float, gen: torch.Generator) -> ColorFactors:
    """torchvision ColorJitter(s, s, s, s): factors in [1-s, 1+s], hue shift in [-s, s]."""
    factors = [_uniform(gen, (b,), 1 - strength, 1 + strength) for _ in range(3)]
    return ColorFactors(*factors, _uniform(gen, (b,), -strength, strength))


_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def _gray(x: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W -> B x 1 x H x W luma."""
    r, g, b = x.unbind(1)
    return (r * _GRAY[0]).add_(g, alpha=_GRAY[1]).add_(b, alpha=_GRAY[2]).unsqueeze(1)


def shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_hue (RGB -> HSV, hue + shift mod 1, HSV -> RGB) for B shifts at
    once, without materialising HSV: a hue shift keeps each pixel's max and its max - min, so
    channel n is max - chroma * clamp(min(k, 4 - k), 0, 1) with k = (n + 6 hue) mod 6.
    (Where max = min every numerator below is 0 too, so the clamped divisor changes nothing.)"""
    r, g, b = x.unbind(1)
    value, chroma = x.amax(1), x.amin(1)
    chroma = chroma.neg_().add_(value)
    safe = chroma.clamp_min(1e-12)
    hue6 = torch.where(  # only needed mod 6: k below is reduced mod 6
        value == r,
        (g - b).div_(safe),
        torch.where(value == g, (b - r).div_(safe).add_(2.0), (r - g).div_(safe).add_(4.0)),
    )
    hue6 += 6.0 * shift.to(x.device, x.dtype).view(-1, 1, 1)
    hue6 -= 6.0 * torch.floor(hue6 * (1 / 6))  # mod 6, on one channel
    offsets = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = offsets + hue6.unsqueeze(1)  # in [1, 11): k mod 6 is k or k - 6
    # min(k', 4 - k') = 2 - |k' - 2| for k' = k mod 6 in [0, 6); for k in [1, 11) that is
    # 2 - min(|k - 2|, |k - 8|) (the other term is >= 4, where the clamp gives 0 anyway)
    distance = torch.minimum((k - 2).abs_(), k.sub_(8).abs_())
    ramp = distance.neg_().add_(2).clamp_(0, 1)
    return torch.addcmul(value.unsqueeze(1), ramp, chroma.unsqueeze(1), value=-1)


def apply_color(x: torch.Tensor, c: ColorFactors) -> torch.Tensor:
    """torchvision's adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue, in that
    order, with each image's own factors (in-place on one copy: these are the hot loops)."""
    _check_batch(x)
    x = (x * _per_image(c.brightness, x)).clamp_(0, 1)
    contrast = _per_image(c.contrast, x)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x.mul_(contrast).add_((1 - contrast) * mean).clamp_(0, 1)
    saturation = _per_image(c.saturation, x)
    gray = _gray(x).mul_(1 - saturation)
    x.mul_(saturation).add_(gray).clamp_(0, 1)
    return shift_hue(x, c.hue)


# ---------------------------------------------------------------- HED stain jitter


def rgb_to_hed(x: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W RGB -> Haematoxylin, Eosin, DAB optical densities, as scikit-image's
    rgb2hed but without its final clipping of negative densities to 0: clipping greys
    near-white background (1.0 -> ~0.9) on the way back, even with no jitter at all."""
    _check_batch(x)
    density = x.clamp_min(1e-6).log().div(_LOG_EPS)
    return torch.einsum("bjhw,jk->bkhw", density, HED_FROM_RGB.to(x.device, x.dtype))


def hed_to_rgb(stains: torch.Tensor) -> torch.Tensor:
    """Inverse of rgb_to_hed; scikit-image's hed2rgb (clipped to [0, 1])."""
    _check_batch(stains)
    log_rgb = torch.einsum("bkhw,kj->bjhw", stains * _LOG_EPS, RGB_FROM_HED.to(stains))
    return log_rgb.exp().clamp(0, 1)


@dataclass
class StainShift:
    alpha: torch.Tensor  # B x 3 scale per stain
    beta: torch.Tensor  # B x 3 shift per stain


def sample_stains(b: int, sigma: float, gen: torch.Generator) -> StainShift:
    return StainShift(
        _uniform(gen, (b, 3), 1 - sigma, 1 + sigma), _uniform(gen, (b, 3), -sigma, sigma)
    )


def apply_stains(x: torch.Tensor, s: StainShift) -> torch.Tensor:
    """hed_to_rgb(alpha * rgb_to_hed(x) + beta) per image (the reference's HEDJitter), as one
    log, one 3 x 3 channel mix and one exp: log(out) = log(x) H diag(alpha) R + log(eps) beta R
    with H = HED_FROM_RGB and R = RGB_FROM_HED. The mix is written as broadcasts rather than a
    batched matmul so that torch.compile fuses the whole chain into one loop."""
    _check_batch(x)
    to_hed, to_rgb = HED_FROM_RGB.to(s.alpha), RGB_FROM_HED.to(s.alpha)
    mix = (to_hed @ torch.diag_embed(s.alpha) @ to_rgb).to(x)  # B x 3 x 3, on row vectors
    offset = (_LOG_EPS * (s.beta @ to_rgb)).to(x)  # B x 3
    log_x = x.clamp_min(1e-6).log()
    mixed = (log_x.unsqueeze(2) * mix.view(-1, 3, 3, 1, 1)).sum(1) + offset.view(-1, 3, 1, 1)
    return mixed.exp_().clamp_(0, 1)


# ---------------------------------------------------------------- crop and affine, one grid
# A grid matrix theta (B x 3 x 3) maps output coordinates to input coordinates, both normalised
# to [-1, 1] across the image (align_corners=False), as F.affine_grid expects.


def crop_theta(box: torch.Tensor) -> torch.Tensor:
    """B x 4 boxes (left, top, width, height) as fractions of the image -> the grid matrix that
    resizes each box to the full image (torchvision's resized_crop)."""
    left, top, width, height = box.unbind(1)
    theta = torch.zeros(len(box), 3, 3, dtype=box.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = width, 2 * left + width - 1
    theta[:, 1, 1], theta[:, 1, 2] = height, 2 * top + height - 1
    theta[:, 2, 2] = 1
    return theta


@dataclass
class Affine:
    angle: torch.Tensor  # B degrees (torchvision's sign convention)
    translate: torch.Tensor  # B x 2, fractions of the image size
    scale: torch.Tensor  # B
    shear: torch.Tensor  # B x 2 degrees (x, y)


def affine_theta(a: Affine) -> torch.Tensor:
    """The grid matrix of torchvision's affine(angle, translate, scale, shear) about the centre
    of a square image: its `_get_inverse_affine_matrix`, batched and in normalised units."""
    rot, sx, sy = a.angle.deg2rad(), a.shear[:, 0].deg2rad(), a.shear[:, 1].deg2rad()
    ra = torch.cos(rot - sy) / torch.cos(sy)
    rb = -torch.cos(rot - sy) * torch.tan(sx) / torch.cos(sy) - torch.sin(rot)
    rc = torch.sin(rot - sy) / torch.cos(sy)
    rd = -torch.sin(rot - sy) * torch.tan(sx) / torch.cos(sy) + torch.cos(rot)
    inverse = torch.stack([torch.stack([rd, -rb], 1), torch.stack([-rc, ra], 1)], 1)
    inverse = inverse / a.scale.view(-1, 1, 1)
    shift = 2 * a.translate  # fractions of the size -> normalised units
    theta = torch.zeros(len(a.angle), 3, 3, dtype=inverse.dtype)
    theta[:, :2, :2] = inverse
    theta[:, :2, 2] = -(inverse @ shift.unsqueeze(-1)).squeeze(-1)
    theta[:, 2, 2] = 1
    return theta


def sample_crop_affine(
    b: int, scale_min: float, affine: float, gen: torch.Generator
) -> torch.Tensor:
    """Grid matrices of RandomResizedCrop(scale=(scale_min, 1), ratio=(3/4, 4/3)) followed by
    RandomAffine(degrees=180a, translate=(a, a), scale=(1-a, 1+a), shear=180a on x and y)."""
    area = _uniform(gen, (b,), scale_min, 1.0)
    log_ratio = _uniform(gen, (b,), math.log(3 / 4), math.log(4 / 3))
    width = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
    height = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    left = torch.rand(b, generator=gen) * (1 - width)
    top = torch.rand(b, generator=gen) * (1 - height)
    crop = crop_theta(torch.stack([left, top, width, height], 1))
    transform = Affine(
        angle=_uniform(gen, (b,), -180 * affine, 180 * affine),
        translate=_uniform(gen, (b, 2), -affine, affine),
        scale=_uniform(gen, (b,), 1 - affine, 1 + affine),
        shear=_uniform(gen, (b, 2), -180 * affine, 180 * affine),
    )
    return crop @ affine_theta(transform)  # output -> affine -> crop box -> input


def sampling_grid(theta: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """F.affine_grid(theta[:, :2], align_corners=False), built as the outer sum it is (x and y
    enter linearly): several times faster on a CPU than affine_grid's batched matmul."""
    b, (h, w) = len(theta), size
    xs = (torch.arange(w, device=theta.device, dtype=theta.dtype) * 2 + 1) / w - 1
    ys = (torch.arange(h, device=theta.device, dtype=theta.dtype) * 2 + 1) / h - 1
    grid = torch.empty(b, h, w, 2, device=theta.device, dtype=theta.dtype)
    for k in range(2):  # k = 0: input x, k = 1: input y
        along_x = (theta[:, k, 0, None] * xs).unsqueeze(1)  # B x 1 x W
        along_y = (theta[:, k, 1, None] * ys + theta[:, k, 2, None]).unsqueeze(2)  # B x H x 1
        torch.add(along_x, along_y, out=grid[..., k])
    return grid


_PADDING = {"zeros": 0, "border": 1, "reflection": 2}  # aten.grid_sampler_2d's codes


def warp(
    x: torch.Tensor,
    theta: torch.Tensor,
    padding: str = "reflection",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Resample each image through its grid matrix (bilinear; one resampling however many
    transforms theta composes); F.grid_sample, written into `out` if given."""
    _check_batch(x, square=True)
    grid = sampling_grid(theta.to(x.device, x.dtype), (x.shape[-2], x.shape[-1]))
    if out is None:
        return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    return torch.ops.aten.grid_sampler_2d.out(x, grid, 0, _PADDING[padding], False, out=out)


# ---------------------------------------------------------------- the two views


@dataclass
class WeakParams:
    """Flips and 90-degree rotations, colour jitter."""

    flips: FlipRotate | None
    color: ColorFactors | None


@dataclass
class StrongParams:
    """HED stain jitter, then one grid: flips and rotations, random resized crop, affine."""

    stains: StainShift | None
    theta: torch.Tensor  # B x 3 x 3


def sample_weak(b: int, cfg: AugmentParams, gen: torch.Generator) -> WeakParams:
    flips = sample_flip_rotate(b, gen) if cfg.flip_rotate else None
    return WeakParams(flips, sample_color(b, cfg.jitter, gen) if cfg.jitter else None)


def sample_strong(b: int, cfg: AugmentParams, gen: torch.Generator) -> StrongParams:
    flips = sample_flip_rotate(b, gen) if cfg.flip_rotate else None
    stains = sample_stains(b, cfg.hed_sigma, gen) if cfg.hed_sigma else None
    theta = sample_crop_affine(b, cfg.crop_scale_min, cfg.affine, gen)
    if flips is not None:  # before the crop: out(p) = x(flips . crop_affine . p)
        theta = flip_rotate_theta(flips) @ theta
    return StrongParams(stains, theta)


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return to_float(x) if x.dtype == torch.uint8 else x


def apply_weak(x: torch.Tensor, p: WeakParams) -> torch.Tensor:
    """x: uint8 or float in [0, 1]; flips move uint8 when given it (4x less memory)."""
    if p.flips is not None:
        x = apply_flip_rotate(x, p.flips)
    x = _as_float(x)
    return apply_color(x, p.color) if p.color is not None else x


def apply_strong(x: torch.Tensor, p: StrongParams) -> torch.Tensor:
    """The stain jitter acts on each pixel alone, so it commutes with the geometric
    transforms: flips and rotations join the crop and affine in one grid, one resampling."""
    x = _as_float(x)
    if p.stains is not None:
        x = apply_stains(x, p.stains)
    return warp(x, p.theta)


def weak_view(x: torch.Tensor, cfg: AugmentParams, gen: torch.Generator) -> torch.Tensor:
    return apply_weak(x, sample_weak(len(x), cfg, gen))


def strong_view(x: torch.Tensor, cfg: AugmentParams, gen: torch.Generator) -> torch.Tensor:
    return apply_strong(x, sample_strong(len(x), cfg, gen))


# ---------------------------------------------------------------- the training batch


def _weak_pixels(
    x: torch.Tensor,
    color: ColorFactors | None,
    scale: torch.Tensor,
    shift: torch.Tensor,
    out: torch.Tensor,
) -> None:
    """The per-pixel part of the weak view of uint8 images, into `out`: colour jitter, then
    (x - mean) / std."""
    x = to_float(x)
    if color is not None:
        x = apply_color(x, color)
    torch.addcmul(shift, x, scale, out=out)


def _strong_pixels(
    x: torch.Tensor, stains: StainShift | None, scale: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """The per-pixel part of the strong view of uint8 images: stain jitter, then (x - mean) /
    std, already here because it commutes with the bilinear warp that follows (its weights
    sum to 1 with reflection padding)."""
    x = to_float(x)
    if stains is not None:
        x = apply_stains(x, stains)
    return torch.addcmul(shift, x, scale)


@dataclass(frozen=True)
class PixelKernels:
    """The per-pixel parts of both views. Eager PyTorch runs each of their few dozen
    elementwise operations as a pass over memory; fused, each view's chain is one loop."""

    weak: typing.Callable[..., torch.Tensor]
    strong: typing.Callable[..., torch.Tensor]
    fused: bool


EAGER = PixelKernels(_weak_pixels, _strong_pixels, fused=False)


@functools.cache
def fused_kernels(device_type: str = "cpu") -> PixelKernels:
    """The same functions through torch.compile (Inductor: C++/OpenMP on a CPU, Triton on a
    GPU), compiled once for any batch and image size; grid_sample stays eager, as ATen's kernel
    beats Inductor's decomposition of it. Where this machine cannot compile them for
    `device_type`, EAGER with a warning: a missing compiler should slow a run down, not stop it."""
    kernels = PixelKernels(
        torch.compile(_weak_pixels, dynamic=True),
        torch.compile(_strong_pixels, dynamic=True),
        fused=True,
    )
    if device_type == "cpu":  # Inductor looks for CUDA even for CPU code, and logs its absence
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    gen = torch.Generator()
    try:  # compile now, in this thread, with sizes > 1 (torch.compile specialises on 1)
        device = torch.device(device_type)
        probe = torch.zeros(2, 3, 8, 8, dtype=torch.uint8, device=device)
        one, out = torch.ones(1, 3, 1, 1, device=device), torch.empty(2, 3, 8, 8, device=device)
        kernels.weak(probe, sample_color(2, 0.1, gen), one, one, out)
        kernels.strong(probe, sample_stains(2, 0.01, gen), one, one)
    except Exception as error:  # compilers fail in many ways; each of them means eager
        warnings.warn(
            f"compute.fuse_augment: torch.compile failed on {device_type} "
            f"({type(error).__name__}: {error}); augmenting with eager PyTorch, slower. "
            "compute.fuse_augment=false silences this.",
            stacklevel=2,
        )
        return EAGER
    return kernels


def pixel_kernels(fused: bool, device: torch.device | str = "cpu") -> PixelKernels:
    return fused_kernels(torch.device(device).type) if fused else EAGER


def _of_rows(params, rows: slice):
    """The same parameters for images `rows` only (dataclasses of per-image tensors)."""
    if params is None or isinstance(params, torch.Tensor):
        return None if params is None else params[rows]
    return type(params)(**{f.name: _of_rows(getattr(params, f.name), rows) for f in fields(params)})


def training_views(
    batches: list[torch.Tensor],
    cfg: AugmentParams,
    gen: torch.Generator,
    mean: list[float],
    std: list[float],
    chunk: int | None = None,
    channels_last: bool = False,
    kernels: PixelKernels = EAGER,
) -> torch.Tensor:
    """uint8 B x 3 x H x W batches (labeled, unlabeled) -> one normalised float tensor of their
    views: weak then strong of the first batch, then of the next; channels_last if asked (the
    layout the network runs in, see device.configure).

    Parameters are drawn for whole batches, so the views do not depend on `chunk`; images are
    augmented `chunk` at a time (device.augment_chunk: a few on a CPU, the whole batch on a
    GPU). Eager chunks run in parallel threads (torch releases
    the GIL, and small operations scale poorly alone); fused ones in this thread, since
    torch.compile is not thread-safe and its kernels use every core themselves."""
    first = batches[0]
    total = 2 * sum(len(batch) for batch in batches)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((total, *first.shape[1:]), device=first.device, memory_format=layout)
    scale = 1 / torch.tensor(std, device=first.device).view(1, 3, 1, 1)
    shift = -torch.tensor(mean, device=first.device).view(1, 3, 1, 1) * scale
    jobs = []
    row = 0
    for batch in batches:
        b = len(batch)
        weak, strong = sample_weak(b, cfg, gen), sample_strong(b, cfg, gen)
        step = chunk or b
        for start in range(0, b, step):
            rows = slice(start, min(start + step, b))
            jobs.append((batch[rows].contiguous(), _of_rows(weak, rows), _of_rows(strong, rows),
                         out[row + rows.start : row + rows.stop],
                         out[row + b + rows.start : row + b + rows.stop]))  # fmt: skip
        row += 2 * b

    def run(job) -> None:
        images, weak, strong, weak_out, strong_out = job  # images: uint8
        flipped = images if weak.flips is None else apply_flip_rotate(images, weak.flips)
        kernels.weak(flipped, weak.color, scale, shift, weak_out)  # flipped as uint8: 4x less
        warp(kernels.strong(images, strong.stains, scale, shift), strong.theta, out=strong_out)

    if len(jobs) == 1 or kernels.fused:
        for job in jobs:
            run(job)
    else:
        list(_pool().map(run, jobs))
    return out


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=torch.get_num_threads(), thread_name_prefix="augment")


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W uint8 -> float in [0, 1]."""
    if batch.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 batch, got {batch.dtype}")
    return batch.float().div_(255.0)


def normalize(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s
