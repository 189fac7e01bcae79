"""A frozen backbone: S5CL steps through it against steps from the features stage's cache, side by
side in one process.

    python bench/frozen.py [--quick] [--images 480] [--views 2]

Data: ../shared/data/pbc-240 (a class-balanced subset of --images cells) packed at 224 px by the
real download and prepare stages, in a temporary project folder. Network: a frozen
timm:vit_small_patch16_224 (random weights: speed does not depend on them) -> 64 -> classes.
Batch: the default's 32 labeled + 64 unlabeled images, a weak and a strong view each.

  through   s5cl.training.loop's loop with images: views made on the device, the frozen ViT's
  forward
            pass (no gradients reach it), SupCon + CE on the heads
  cache     the same loop, same batches and losses, from the features stage's cache: a few small
            matmuls a step

First the features stage itself runs (its one-off cost: --images x (V weak + V strong + plain)
forward passes). Then step times alternate between the two designs (these machines are noisy),
and the medians are compared. A whole s5cl phase (120 steps) from the cache is measured; through
the backbone it is projected from the step time. The last line is
`per-step speedup X.Xx, phase speedup Y.Yx (features stage included)`.
`--quick` runs the same code at 32 px with a 2-block ViT on 64 images (the tests run it through
bench/gpu_check.py --smoke).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from shared_data import PBC, ROOT

from s5cl.config.params import Params, validate
from s5cl.model.network import S5CLNet
from s5cl.pipeline import stages
from s5cl.pipeline.common import open_packed
from s5cl.training.device import configure, pick_device
from s5cl.training.loop import NoLog, train
from s5cl.training.methods import UnlabeledTargets, make_objective

ARCH = "timm:vit_small_patch16_224"


def subset(dest: Path, count: int) -> Path:
    """`count` pbc-240 cells, the same number from each class, linked into class folders."""
    classes = sorted(p for p in PBC.iterdir() if p.is_dir())
    for folder in classes:
        for src in sorted(folder.glob("*.jpg"))[: count // len(classes)]:
            (dest / folder.name).mkdir(parents=True, exist_ok=True)
            (dest / folder.name / src.name).symlink_to(src)
    return dest


def params_for(quick: bool, images: Path, views: int, steps: int, freeze: str) -> Params:
    model = {"arch": ARCH, "freeze": freeze, "feature_views": views}
    if quick:
        model["kwargs"] = {"img_size": 32, "patch_size": 8, "depth": 2}
    return validate(
        {
            "compute": {"fuse_augment": not quick},  # compiling costs more than quick's work
            "data": {"name": "folder", "root": str(images), "size": 32 if quick else 224},
            "model": model,
            "augment": {"flip_rotate": True},
            "s5cl": {"steps": steps, "eval_every": 10**6},
            "checkpoint": {"every": 0},
        }
    )


def timed(work) -> float:
    start = time.perf_counter()
    work()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the tests")
    parser.add_argument("--images", type=int, default=480, help="pbc-240 cells (8 classes)")
    parser.add_argument("--views", type=int, default=2, help="model.feature_views")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two designs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    args.json = args.json and args.json.resolve()  # measure() runs in a temporary folder
    if not PBC.is_dir():
        sys.exit(f"{PBC}: absent (../shared/data is needed)")
    images = 64 if args.quick else args.images
    work = Path(tempfile.mkdtemp(prefix="s5cl-frozen-"))
    os.chdir(work)  # the stages read and write relative to a project root
    try:
        measure(args, images, work)
    finally:
        os.chdir(ROOT)
        shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, images: int, work: Path) -> None:
    """Everything above, in the temporary project `work` (the current folder)."""
    phase_steps = 120
    stage = stages.get("s5cl")
    device = pick_device()
    tree = subset(work / "cells", images)
    cached = params_for(args.quick, tree, args.views, phase_steps, "all")
    for name in ("download", "prepare"):
        stages.function(name)(cached)

    seconds = timed(lambda: stages.function("features")(cached))
    passes = images * (2 * args.views + 1)

    data = open_packed(cached)
    everything = np.arange(len(data.labels))
    split = pd.DataFrame(
        {
            "index": np.concatenate([everything, everything]),
            "role": ["labeled"] * len(everything) + ["unlabeled"] * len(everything),
        }
    )
    torch.manual_seed(0)
    model = S5CLNet(data.num_classes, cached.model, data.images.shape[1])  # frozen, random
    configure(model, cached.compute, device)
    targets = UnlabeledTargets("instance", 0.7, 1.0, 0.7, 1.0)

    def steps(freeze: str, count: int):
        """`count` steps of the s5cl phase; freeze=none here only tells train() to go through
        the images (the model's encoder is frozen either way)."""
        params = params_for(args.quick, tree, args.views, count, freeze)
        objective = make_objective(stage.phase, model, params, data.num_classes, targets)
        return lambda: train(stage.phase, objective, params, data, split, NoLog(), None)

    cache_steps = 20
    through, from_cache = [], []
    steps("none", 1)(), steps("all", 2)()  # warm up both (allocations, first calls)
    for _ in range(args.rounds):
        through.append(timed(steps("none", 1)))
        from_cache.append(timed(steps("all", cache_steps)) / cache_steps)
    phase = timed(steps("all", phase_steps))
    step_through, step_cache = statistics.median(through), statistics.median(from_cache)

    size = data.images.shape[1]
    cpu = platform.processor() or platform.machine()
    print(
        f"frozen {ARCH}{' (2 blocks, quick)' if args.quick else ''}, {size} px, batch 32 labeled "
        f"+ 64 unlabeled (192 views); pbc-240, {images} images; {device}, {cpu}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        f"features stage (once): {images} images x ({args.views} weak + {args.views} strong + "
        f"plain) = {passes} passes in {seconds:.1f} s ({passes / seconds:.1f} passes/s)"
    )
    print(f"s5cl step through the backbone: {step_through:.3f} s (median of {args.rounds})")
    print(
        f"s5cl step from cached features: {1000 * step_cache:.2f} ms "
        f"(median of {args.rounds} x {cache_steps} steps)"
    )
    projected = step_through * phase_steps
    print(
        f"s5cl phase ({phase_steps} steps): through the backbone {projected:.1f} s (projected "
        f"from the step), from the cache {phase:.2f} s (measured) + {seconds:.1f} s features"
    )
    if args.json:
        args.json.write_text(json.dumps({
            "device": str(device), "images": images, "size": size, "passes": passes,
            "features_seconds": seconds, "features_passes_per_s": passes / seconds,
            "step_through_s": step_through, "step_cache_s": step_cache,
        }, indent=1))  # fmt: skip
    print(
        f"per-step speedup {step_through / step_cache:.1f}x, phase speedup "
        f"{projected / (phase + seconds):.1f}x (features stage included)"
    )


if __name__ == "__main__":
    main()
