"""Where and how the network runs: the device, the autocast dtype, torch.compile.

Everything else (data path, augmentations, losses) is the same on every device; only these
choices change, so a CPU laptop and a GPU node run the same code.
"""

from __future__ import annotations

import os

import torch

from s5cl.params import ComputeParams


def pick_device() -> torch.device:
    """`cuda` when present (under torchrun, the process's own GPU: LOCAL_RANK), else CPU;
    S5CL_DEVICE=cpu forces the CPU."""
    wanted = os.environ.get("S5CL_DEVICE", "auto")
    if wanted == "auto" and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu" if wanted == "auto" else wanted)


def augment_chunk(device: torch.device) -> int | None:
    """Images augmented at a time (augment.training_views): 8 on a CPU, measured fastest at 32
    and 224 px (larger chunks fall out of cache, smaller ones pay per-call overhead); the
    whole batch on a GPU, which needs large kernels to fill it."""
    return 8 if device.type == "cpu" else None


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 for `bf16`, and for `auto` on a GPU that supports it; None means fp32.

    `auto` keeps fp32 on the CPU: without bf16 units (most CPUs), bf16 convolutions are
    emulated and slower, and fp32 keeps CPU results bitwise reproducible."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def configure(model: torch.nn.Module, cfg: ComputeParams, device: torch.device) -> None:
    """Move `model` to `device` in channels_last (faster convolutions), set the dtype its
    forward pass autocasts to, and compile its encoder in place if asked (state_dict keys
    stay the same, so checkpoints are interchangeable)."""
    model.to(device, memory_format=torch.channels_last)
    model.autocast = autocast_dtype(cfg.precision, device)
    if cfg.compile and not getattr(model, "compiled", False):
        model.encoder.compile()
        model.compiled = True
