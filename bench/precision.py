"""A ResNet-18 training step in fp32 and under bf16 autocast, side by side, at three sizes.

    python bench/precision.py

What `compute.precision: auto`'s rule for CPUs rests on (s5cl.training.device.autocast_dtype): bf16
autocast with channels_last against fp32, a forward, backward and Adam step of torchvision's
ResNet-18 on random images, at 32 px (batch 96), 64 px (batch 128) and 224 px (batch 32). The
two precisions alternate, twice each, and the medians are compared. The last lines say what
`auto` picks on this machine.
"""

from __future__ import annotations

import statistics
import time

import torch
import torchvision

from s5cl.training.device import autocast_dtype, cpu_has_bf16, cpu_name, pick_device

SIZES = ((32, 96), (64, 128), (224, 32))  # (px, batch)


def step_seconds(px: int, batch: int, bf16: bool, device, steps: int = 3) -> float:
    """Median seconds of a training step after one untimed step."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(
        device, memory_format=torch.channels_last
    )
    optimizer = torch.optim.Adam(model.parameters())
    x = torch.randn(batch, 3, px, px, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    device = pick_device()
    where = cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"{where}, {torch.get_num_threads()} threads, cpu_has_bf16: {cpu_has_bf16()}")
    for px, batch in SIZES:
        fp32, bf16 = [], []
        for _ in range(2):  # alternate: these machines are noisy
            fp32.append(step_seconds(px, batch, False, device))
            bf16.append(step_seconds(px, batch, True, device))
        a, b = statistics.median(fp32), statistics.median(bf16)
        auto = "bf16" if autocast_dtype("auto", device, px) is torch.bfloat16 else "fp32"
        print(f"{px:>4} px, batch {batch:>3}: fp32 {a * 1e3:6.0f} ms, bf16 {b * 1e3:6.0f} ms, "
              f"bf16 {a / b:.2f}x fp32; auto picks {auto}")  # fmt: skip


if __name__ == "__main__":
    main()
