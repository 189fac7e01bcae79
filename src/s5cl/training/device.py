"""Where and how the network runs: the device, the autocast dtype, torch.compile.

Everything else (data path, augmentations, losses) is the same on every device; only these
choices change, so a CPU laptop and a GPU node run the same code.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from s5cl.config.params import ComputeParams


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


BF16_MIN_SIZE = 64  # below this, bf16 brought no gain on any CPU measured (docs/speed.md)


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AMX-BF16 on Xeons since Sapphire Rapids,
    AVX512-BF16 on Cooper Lake and AMD Zen 4): oneDNN's bf16 convolutions then run about twice
    as fast as fp32 ones. Read from the flags Linux reports; False elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])  # fmt: skip
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast_dtype(
    precision: str, device: torch.device, image_size: int | None = None
) -> torch.dtype | None:
    """bf16 for `bf16`; None (fp32) for `fp32`. `auto` picks bf16 on a GPU that supports it,
    and on a CPU with native bf16 units for images of at least BF16_MIN_SIZE px, where it
    measured 1.5-2.8x faster a training step; elsewhere fp32: bf16 is emulated (slower) on
    other CPUs, gains nothing at 32 px, and fp32 keeps CPU results bitwise reproducible."""
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu" and (image_size or 0) >= BF16_MIN_SIZE and cpu_has_bf16():
        return torch.bfloat16
    return None


def cpu_name() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it (platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: torch.device, dtype: torch.dtype | None) -> str:
    """What runs where, for a stage's first line: the device (GPU or CPU model), the
    precision, and the threads torch uses on the CPU."""
    if device.type == "cuda":
        where = f"{device} ({torch.cuda.get_device_name(device)})"
    else:
        where = f"cpu ({cpu_name()}, {torch.get_num_threads()} threads)"
    precision = "bf16 autocast" if dtype is torch.bfloat16 else "fp32"
    return f"device {where}, {precision} (compute.precision)"


def configure(
    model: torch.nn.Module,
    cfg: ComputeParams,
    device: torch.device,
    image_size: int | None = None,
) -> None:
    """Move `model` to `device` in channels_last (faster convolutions), set the dtype its
    forward pass autocasts to, and compile its encoder in place if asked (state_dict keys
    stay the same, so checkpoints are interchangeable). `image_size`: the images' side, for
    `auto` precision on a CPU."""
    model.to(device, memory_format=torch.channels_last)
    model.autocast = autocast_dtype(cfg.precision, device, image_size)
    if cfg.compile and not getattr(model, "compiled", False):
        model.encoder.compile()
        model.compiled = True
