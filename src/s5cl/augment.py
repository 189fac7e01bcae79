"""Weak and strong views of a whole batch at once, with parameters sampled per image.

Images are B x 3 x H x W float tensors in [0, 1] on any device. Random parameters are drawn on
the CPU from the caller's generator (so the same seed gives the same views on any device) and
applied as tensor operations: no Python loop over images. Sampling per image fixes a defect of
the reference code, which drew one set of parameters for a whole batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from s5cl.params import AugmentParams

# Ruifrok & Johnston stain vectors, as in scikit-image's rgb2hed / hed2rgb.
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
_LOG_EPS = math.log(1e-6)


def _uniform(gen: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen)


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """B values -> B x 1 x 1 x 1 on `like`'s device, to broadcast over an image batch."""
    return values.to(like.device, like.dtype).view(-1, 1, 1, 1)


def flip_rotate(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal and vertical flips and a random multiple of 90 degrees, per image."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"flip_rotate needs square images, got {tuple(x.shape[-2:])}")
    b = x.shape[0]
    hflip = _per_image(torch.rand(b, generator=gen) < 0.5, x).bool()
    vflip = _per_image(torch.rand(b, generator=gen) < 0.5, x).bool()
    x = torch.where(hflip, x.flip(-1), x)
    x = torch.where(vflip, x.flip(-2), x)
    quarter = torch.randint(0, 4, (b,), generator=gen).to(x.device)
    rotations = torch.stack([torch.rot90(x, k, (-2, -1)) for k in range(4)])  # 4 x B x C x H x W
    return rotations[quarter, torch.arange(b, device=x.device)]


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def color_jitter(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation factors in [1-s, 1+s] (torchvision's definitions) and
    a hue rotation of up to s of a turn (in YIQ space), each drawn per image."""
    if strength == 0:
        return x
    b = x.shape[0]
    brightness, contrast, saturation = (
        _per_image(_uniform(gen, (b,), 1 - strength, 1 + strength), x) for _ in range(3)
    )
    hue = _uniform(gen, (b,), -strength, strength) * 2 * math.pi
    x = (x * brightness).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (mean + contrast * (x - mean)).clamp(0, 1)
    gray = _gray(x)
    x = (gray + saturation * (x - gray)).clamp(0, 1)
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    cos, sin = hue.cos(), hue.sin()
    rotation = torch.zeros(b, 3, 3)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    transform = torch.linalg.inv(yiq) @ rotation @ yiq  # B x 3 x 3, RGB -> RGB
    x = torch.einsum("bij,bjhw->bihw", transform.to(x.device, x.dtype), x)
    return x.clamp(0, 1)


def hed_jitter(x: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """Stain augmentation: into Haematoxylin-Eosin-DAB optical density (scikit-image's rgb2hed),
    scale each stain by U(1-sigma, 1+sigma) and shift it by U(-sigma, sigma), and back (hed2rgb).

    Unlike rgb2hed, negative stain densities are not clipped to 0: clipping them whitens
    nothing back, it greys near-white background (1.0 -> ~0.9) even with no jitter at all.
    """
    if sigma == 0:
        return x
    b = x.shape[0]
    to_hed = HED_FROM_RGB.to(x.device, x.dtype)
    to_rgb = RGB_FROM_HED.to(x.device, x.dtype)
    pixels = x.clamp_min(1e-6).log().div(_LOG_EPS).permute(0, 2, 3, 1)  # B x H x W x 3
    stains = pixels @ to_hed
    alpha = _uniform(gen, (b, 1, 1, 3), 1 - sigma, 1 + sigma).to(x.device, x.dtype)
    beta = _uniform(gen, (b, 1, 1, 3), -sigma, sigma).to(x.device, x.dtype)
    stains = stains * alpha + beta
    rgb = torch.exp((stains * _LOG_EPS) @ to_rgb)
    return rgb.permute(0, 3, 1, 2).clamp(0, 1)


def crop_affine(
    x: torch.Tensor, scale_min: float, affine: float, gen: torch.Generator
) -> torch.Tensor:
    """Random resized crop (area in [scale_min, 1], aspect in [3/4, 4/3]) composed with a small
    random rotation, shear and translation (all of magnitude `affine`) into one sampling grid."""
    b = x.shape[0]
    area = _uniform(gen, (b,), scale_min, 1.0)
    log_ratio = _uniform(gen, (b,), math.log(3 / 4), math.log(4 / 3))
    width = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
    height = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    center_x = _uniform(gen, (b,), -1.0, 1.0) * (1 - width)
    center_y = _uniform(gen, (b,), -1.0, 1.0) * (1 - height)
    angle = _uniform(gen, (b,), -affine, affine) * math.pi
    shear = _uniform(gen, (b,), -affine, affine)
    shift = _uniform(gen, (b, 2), -affine, affine)
    cos, sin = angle.cos(), angle.sin()
    # theta maps output coordinates in [-1, 1] to input coordinates: crop . rotate . shear
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = width * cos
    theta[:, 0, 1] = width * (cos * shear - sin)
    theta[:, 1, 0] = height * sin
    theta[:, 1, 1] = height * (sin * shear + cos)
    theta[:, 0, 2] = center_x + shift[:, 0]
    theta[:, 1, 2] = center_y + shift[:, 1]
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def weak_view(x: torch.Tensor, cfg: AugmentParams, gen: torch.Generator) -> torch.Tensor:
    """Flips, 90-degree rotations, colour jitter."""
    if cfg.flip_rotate:
        x = flip_rotate(x, gen)
    return color_jitter(x, cfg.jitter, gen)


def strong_view(x: torch.Tensor, cfg: AugmentParams, gen: torch.Generator) -> torch.Tensor:
    """Flips, 90-degree rotations, HED stain jitter, random resized crop and small affine."""
    if cfg.flip_rotate:
        x = flip_rotate(x, gen)
    x = hed_jitter(x, cfg.hed_sigma, gen)
    return crop_affine(x, cfg.crop_scale_min, cfg.affine, gen)


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W uint8 -> float in [0, 1]."""
    if batch.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 batch, got {batch.dtype}")
    return batch.float().div_(255.0)


def normalize(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s
