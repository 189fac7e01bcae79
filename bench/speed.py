"""Our data path and training step against the reference design, side by side in one process.

    python bench/speed.py [--quick] [--memory]

Both designs see the same images (../shared/data/pbc-240 resized to 224, stored as 224 px PNGs
the way NCT-CRC-HE-100K ships its tiles), the same network (ResNet-18 -> 64 -> classes, same
initial weights) and the same loss (pytorch-metric-learning SupConLoss on labeled and unlabeled
views + CE, Adamax):

  reference  per-image PIL decode from the files, per-image torchvision transforms (the
             reference repo's weak and strong views: flips, quarter turns, ColorJitter,
             scikit-image HED jitter, RandomResizedCrop, a random affine) in DataLoader workers
  ours       one gather of uint8 rows from the packed memmap, moved to the device, weak and
             strong views of the whole batch there (s5cl.data.augment), and the training loop of
             s5cl.training.loop itself, timed from the outside

Measurements alternate between the two designs (these machines are noisy) and the medians are
compared. Our train step is also timed in fp32 and under bf16 autocast, alternating, with
what `compute.precision: auto` picks on this machine. The last line is `data-path speedup
X.Xx, train-step speedup Y.Yx`.

It then counts the FLOPs of one S5CL step at the paper's batch (32 labeled + 128 unlabeled
images, two views each, 224 px) with torch's FlopCounterMode and turns them into an estimate of
the reference 5-epoch NCT-CRC-HE-100K run (3,906 steps) on one GPU, for a stated sustained
throughput. `--memory` measures peak RSS of training on a 20,000-image set (prepare's is
bench/prepare_scaling.py's).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from pytorch_metric_learning.losses import SupConLoss
from pytorch_metric_learning.samplers import MPerClassSampler
from shared_data import PBC
from torch.utils.data import DataLoader, Dataset, RandomSampler

from s5cl.config.params import DataParams, validate
from s5cl.data.packed import PackedDataset
from s5cl.data.packing import INDEX, decode_file, pack_images
from s5cl.data.registry import download_dataset
from s5cl.model.network import S5CLNet
from s5cl.pipeline import stages
from s5cl.training.device import autocast_dtype, cpu_has_bf16, pick_device
from s5cl.training.loop import NoLog, train
from s5cl.training.methods import UnlabeledTargets, make_objective

SIZE = 224
REFERENCE_STEPS = 3906  # 5 epochs of NCT-CRC-HE-100K at 128 unlabeled images a step (docs/speed.md)


# ---------------------------------------------------------------- the reference design


class HEDJitter:
    """The reference's per-image stain jitter: scikit-image rgb2hed, alpha * s + beta, hed2rgb,
    min-max rescaled to uint8 (parameters drawn per call here, which is the kinder reading)."""

    def __init__(self, theta: float):
        self.theta = theta

    def __call__(self, image: Image.Image) -> Image.Image:
        from skimage.color import hed2rgb, rgb2hed

        alpha = np.random.uniform(1 - self.theta, 1 + self.theta, (1, 3))
        beta = np.random.uniform(-self.theta, self.theta, (1, 3))
        array = np.asarray(image)
        stains = rgb2hed(array).reshape(-1, 3) * alpha + beta
        rgb = hed2rgb(stains.reshape(array.shape))
        low, high = rgb.min(), rgb.max()
        return Image.fromarray((255 * (rgb - low) / max(high - low, 1e-12)).astype(np.uint8))


class QuarterTurn:
    def __call__(self, image: Image.Image) -> Image.Image:
        return TF.rotate(image, float(np.random.choice([0, 90, 180, 270])))


def reference_views(mean: list[float], std: list[float]) -> Callable:
    weak = T.Compose(
        [
            T.RandomHorizontalFlip(),
            T.RandomVerticalFlip(),
            QuarterTurn(),
            T.ColorJitter(0.1, 0.1, 0.1, 0.1),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
    strong = T.Compose(
        [
            T.RandomHorizontalFlip(),
            T.RandomVerticalFlip(),
            QuarterTurn(),
            HEDJitter(0.01),
            T.RandomResizedCrop(SIZE, scale=(0.5, 1.0)),
            T.RandomAffine(degrees=9, translate=(0.05, 0.05), scale=(0.95, 1.05), shear=9),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
    return lambda image: (weak(image), strong(image))


class ImageFiles(Dataset):
    def __init__(self, paths: list[Path], labels: np.ndarray, views: Callable):
        self.paths, self.labels, self.views = paths, labels, views

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        image = Image.open(self.paths[i]).convert("RGB")
        weak, strong = self.views(image)
        return weak, strong, int(self.labels[i]), i


def _seed_worker(worker_id: int) -> None:
    np.random.seed(torch.initial_seed() % 2**32)


def reference_loader(files: ImageFiles, batch: int, workers: int, labeled: bool) -> DataLoader:
    """Its workers live only while an iterator over it does: nothing of the reference runs in
    the background while our design is timed (on 2 CPUs that would halve our numbers)."""
    sampler = (
        MPerClassSampler(files.labels, 4, batch, length_before_new_iter=1000 * batch)
        if labeled
        else RandomSampler(files, replacement=True, num_samples=10**9)
    )
    return DataLoader(
        files,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        worker_init_fn=_seed_worker,
    )


class ReferenceStep:
    """One reference training step: next batches from both loaders, forward, SupCon + CE."""

    def __init__(self, model: S5CLNet, labeled: DataLoader, unlabeled: DataLoader, device):
        self.model, self.device = model, device
        self.loaders = (labeled, unlabeled)
        self.optimizer = torch.optim.Adamax(model.parameters(), lr=1e-3, weight_decay=1e-4)
        self.loss_l, self.loss_u = SupConLoss(temperature=0.1), SupConLoss(temperature=0.7)

    def start(self) -> None:
        self.labeled, self.unlabeled = (iter(loader) for loader in self.loaders)

    def stop(self) -> None:
        del self.labeled, self.unlabeled  # shuts the workers down

    def __call__(self) -> float:
        weak_l, strong_l, y, _ = next(self.labeled)
        weak_u, strong_u, _, ids = next(self.unlabeled)
        x = torch.cat([weak_l, strong_l, weak_u, strong_u]).to(self.device, non_blocking=True)
        y, ids = y.to(self.device), ids.to(self.device) + 1000
        emb = self.model.embed(x.contiguous(memory_format=torch.channels_last))
        n_l = 2 * len(y)
        loss = (
            self.loss_l(emb[:n_l], torch.cat([y, y]))
            + self.loss_u(emb[n_l:], torch.cat([ids, ids]))
            + F.cross_entropy(self.model.classifier(emb[: len(y)]), y)
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()


# ---------------------------------------------------------------- ours


def our_views(
    data: PackedDataset, batch: int, device, gen: torch.Generator, fuse: bool
) -> Callable:
    """One gather from the memmap, uint8 to the device, both views as in s5cl.training.loop
    (fuse: compute.fuse_augment, the default's fused per-pixel kernels)."""
    from s5cl.config.params import AugmentParams
    from s5cl.data.augment import pixel_kernels, training_views
    from s5cl.training.device import augment_chunk

    aug = AugmentParams(flip_rotate=True)
    chunk, kernels = augment_chunk(device), pixel_kernels(fuse, device)

    def one_batch() -> torch.Tensor:
        rows = np.sort(torch.randint(0, len(data.labels), (batch,), generator=gen).numpy())
        uint8 = data.batch(rows, device)
        return training_views([uint8], aug, gen, data.mean, data.std, chunk, True, kernels)

    return one_batch


def our_training(
    data: PackedDataset,
    model: S5CLNet,
    batch_l: int,
    batch_u: int,
    compile: bool = False,
    fuse: bool = True,
    precision: str = "auto",
) -> Callable:
    """`run(steps)`: s5cl.training.loop's loop, S5CL phase (labeled + unlabeled instance targets),
    with
    every image both labeled and unlabeled; `compile`, `fuse` and `precision`:
    compute.compile (the encoder), compute.fuse_augment and compute.precision."""
    stage = stages.get("s5cl")

    def params_for(steps: int):
        return validate(
            {
                "augment": {"flip_rotate": True},
                "compute": {"compile": compile, "fuse_augment": fuse, "precision": precision},
                "s5cl": {"batch_labeled": batch_l, "m_per_class": 4 if batch_l >= 32 else 1,
                         "batch_unlabeled": batch_u, "eval_every": 10**6, "steps": steps},
                "checkpoint": {"every": 0},
            }
        )  # fmt: skip

    targets = UnlabeledTargets("instance", 0.7, 1.0, 0.7, 1.0)
    objective = make_objective(stage.phase, model, params_for(1), data.num_classes, targets)
    everything = np.arange(len(data.labels))
    split = pd.DataFrame(
        {
            "index": np.concatenate([everything, everything]),
            "role": ["labeled"] * len(everything) + ["unlabeled"] * len(everything),
        }
    )

    def run(steps: int) -> None:
        # no checkpoints (the last argument)
        train(stage.phase, objective, params_for(steps), data, split, NoLog(), None)

    return run


def compare_precisions(
    data: PackedDataset, base: S5CLNet, batch_l: int, batch_u: int, steps: int, rounds: int,
    device, fuse: bool,
) -> dict[str, float]:  # fmt: skip
    """Our train step in fp32 and under bf16 autocast, alternating; median img/s of each."""
    runs = {
        name: our_training(data, copy.deepcopy(base), batch_l, batch_u, fuse=fuse, precision=name)
        for name in ("fp32", "bf16")
    }
    seen: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run(1)  # untimed: allocations, oneDNN's kernel choice
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run(steps)
            _sync(device)
            seen[name].append((batch_l + batch_u) * steps / (time.perf_counter() - start))
    return {name: statistics.median(v) for name, v in seen.items()}


# ---------------------------------------------------------------- measuring


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(
    work: Callable[[], object], images_per_call: int, calls: int, device, untimed: int = 1
) -> float:
    """Images per second over `calls` calls, after `untimed` calls (allocations, and for the
    reference the batches its workers prefetched while the other design was being timed)."""
    for _ in range(untimed):
        work()
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        work()
    _sync(device)
    return images_per_call * calls / (time.perf_counter() - start)


def png_tiles(dest: Path, count: int) -> Path:
    """`count` pbc-240 cells resized to 224 px, saved as PNG in class folders (NCT's format)."""
    sources = sorted(PBC.glob("*/*.jpg"))
    step = max(1, len(sources) // count)
    for src in sources[::step][:count]:
        array = decode_file(str(src), SIZE).image
        target = dest / src.parent.name / f"{src.stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(target)
    return dest


def pack(folder: Path, work: Path, size: int = SIZE) -> PackedDataset:
    """A class-folder dataset through the real download and prepare, into work/packed."""
    raw, out = work / "raw", work / "packed"
    download_dataset(DataParams(name="folder", root=str(folder)), raw, raw)
    pack_images(raw, out, size, workers=os.cpu_count())
    return PackedDataset.open(out)


def step_flops(model: S5CLNet, images: int) -> float:
    """FLOPs of one S5CL step (forward + backward, two views each) on `images` 224 px images."""
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(model).cpu().train()
    x = torch.randn(2 * images, 3, SIZE, SIZE)
    y = torch.arange(images) % 4
    with FlopCounterMode(display=False) as counter:
        emb = model.embed(x)
        loss = SupConLoss(0.1)(emb, torch.cat([y, y])) + F.cross_entropy(
            model.classifier(emb), torch.cat([y, y])
        )
        loss.backward()
    return float(counter.get_total_flops())


def gather_seconds(data: PackedDataset, images: int, calls: int = 20) -> float:
    """Median time to gather `images` random rows from the memmap into a uint8 tensor (the
    host's share of a step, whatever the device)."""
    rng = np.random.default_rng(0)
    times = []
    for _ in range(calls):
        rows = np.sort(rng.choice(len(data.labels), images, replace=len(data.labels) < images))
        start = time.perf_counter()
        data.batch(rows, torch.device("cpu"))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------- peak memory (--memory)

MEMORY_TRAIN = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from speed import our_training
from s5cl.data.packed import PackedDataset
from s5cl.model.network import S5CLNet
data = PackedDataset.open(Path(sys.argv[1]))
our_training(data, S5CLNet(data.num_classes), 32, 32)(int(sys.argv[2]))
# /proc, not getrusage: ru_maxrss survives execve, so a child would report its parent's peak
status = {k: int(v.split()[0]) / 1024 for k, v in
          (line.split(":", 1) for line in open("/proc/self/status")) if v.strip().endswith("kB")}
print(json.dumps({"peak": status["VmHWM"], "anon": status["RssAnon"], "file": status["RssFile"]}))
"""


def memory(work: Path, count: int, steps: int) -> None:
    """Peak RSS of training at 224 px in a fresh process: pbc-240 (1,920 images) against
    `count` (prepare's own memory is bench/prepare_scaling.py's)."""
    from prepare_scaling import synthetic_folder

    big = synthetic_folder(work / f"synthetic-{count}", count)
    print(f"\npeak memory of training at {SIZE} px ({steps} steps of 32 + 32 images)")
    print(f"{'images':>8} {'packed':>10} {'peak RSS':>10} {'anon':>10} {'file-backed':>12}")
    for root in (PBC, big):
        data = pack(root, work / f"memory-{root.name}")
        result = subprocess.run(
            [sys.executable, "-c", MEMORY_TRAIN, str(work / f"memory-{root.name}" / "packed"),
             str(steps), str(Path(__file__).parent)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        used = json.loads(result.stdout.strip().splitlines()[-1])
        print(
            f"{len(data.labels):>8} {data.images.nbytes / 2**20:>7.0f} MB {used['peak']:>7.0f} MB"
            f" {used['anon']:>7.0f} MB {used['file']:>9.0f} MB"
        )
        shutil.rmtree(work / f"memory-{root.name}")


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small batches; under a minute on a CPU"
    )
    parser.add_argument("--memory", action="store_true", help="also peak RSS on 20,000 images")
    parser.add_argument("--gpu-tflops", type=float, default=60.0,
                        help="sustained bf16 TFLOP/s assumed for the GPU estimate")  # fmt: skip
    parser.add_argument("--batch-unlabeled", type=int, default=32,
                        help="unlabeled images a train step (the paper: 128)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="the reference's DataLoader workers (default: every CPU)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the medians and ratios here")
    args = parser.parse_args()
    if not PBC.is_dir():
        sys.exit(f"{PBC} is absent: this benchmark reads ../shared/data/pbc-240")

    device = pick_device()
    workers = args.workers
    count, batch_l, batch_u, data_batch, calls, steps, rounds = (
        (128, 8, 8, 32, 2, 1, 1) if args.quick else (960, 32, args.batch_unlabeled, 64, 4, 2, 3)
    )
    fuse = not args.quick  # compiling the fused views costs more than quick's work (~8 s)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="s5cl-speed-") as tmp:
        work = Path(tmp)
        tiles = png_tiles(work / "tiles", count)
        data = pack(tiles, work)
        index = pd.read_parquet(work / "packed" / INDEX, columns=["path"])
        paths = [Path(p) for p in index["path"]]  # the packed rows' source files, in row order
        files = ImageFiles(paths, data.labels, reference_views(data.mean, data.std))
        base = S5CLNet(data.num_classes)
        print(
            f"{len(files)} pbc-240 cells at {SIZE} px, device {device}, {workers} CPUs, "
            f"{workers} DataLoader workers; a train step: {batch_l} labeled + {batch_u} "
            f"unlabeled images x 2 views; views {'fused' if fuse else 'eager (--quick)'}"
        )

        ref_data = reference_loader(files, data_batch, workers, labeled=False)
        ours_data = our_views(data, data_batch, device, gen, fuse)
        ref_model = copy.deepcopy(base).to(device, memory_format=torch.channels_last).train()
        ref_step = ReferenceStep(
            ref_model,
            reference_loader(files, batch_l, workers, labeled=True),
            reference_loader(files, batch_u, workers, labeled=False),
            device,
        )
        ours_train = our_training(data, copy.deepcopy(base), batch_l, batch_u, fuse=fuse)
        ours_train(1)  # untimed: allocations, first batches

        results: dict[str, list[float]] = {
            k: [] for k in ("ref data", "ours data", "ref train", "ours train")
        }
        for r in range(rounds):
            batches = iter(ref_data)  # untimed: worker start-up and their first wave of batches
            results["ref data"].append(
                rate(batches.__next__, data_batch, calls, device, untimed=workers)
            )
            del batches  # shuts its workers down
            results["ours data"].append(rate(ours_data, data_batch, calls, device))
            ref_step.start()
            results["ref train"].append(rate(ref_step, batch_l + batch_u, steps, device))
            ref_step.stop()
            start = time.perf_counter()
            ours_train(steps)
            _sync(device)
            results["ours train"].append(
                (batch_l + batch_u) * steps / (time.perf_counter() - start)
            )
            print(
                f"round {r + 1}/{rounds}: "
                + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in results.items())
            )
        median = {k: statistics.median(v) for k, v in results.items()}
        precisions = compare_precisions(data, base, batch_l, batch_u, steps, rounds, device, fuse)

        flops_per_image = step_flops(base, 2) / 2
        paper_step = flops_per_image * (32 + 128)
        cpu_rate = median["ours train"] * flops_per_image / 1e9
        gather = gather_seconds(data, 32 + 128)
        compute_min = REFERENCE_STEPS * paper_step / (args.gpu_tflops * 1e12) / 60
        gather_min = REFERENCE_STEPS * gather / 60
        data_share = median["ours train"] / median["ours data"]

        print(f"\n{'':24}{'reference':>12}{'ours':>12}{'ratio':>9}")
        for what, ref, ours in (
            ("data path (img/s)", median["ref data"], median["ours data"]),
            ("train step (img/s)", median["ref train"], median["ours train"]),
        ):
            print(f"{what:24}{ref:>12.1f}{ours:>12.1f}{ours / ref:>8.1f}x")
        print(
            f"\nS5CL step at the paper's batch (32 + 128 images, 2 views, {SIZE} px): "
            f"{paper_step / 1e12:.2f} TFLOP counted ({flops_per_image / 1e9:.1f} GFLOP an image); "
            f"this {device.type} sustains {cpu_rate:.0f} GFLOP/s in our step, with the data path "
            f"taking {data_share:.0%} of it."
        )
        print(
            f"GPU estimate: {REFERENCE_STEPS} steps (5 epochs of NCT-CRC-HE-100K) x "
            f"{paper_step / 1e12:.2f} TFLOP at {args.gpu_tflops:.0f} TFLOP/s sustained = "
            f"{compute_min:.1f} min, + the host's memmap gather of each step's 160 images "
            f"({gather * 1e3:.1f} ms measured here, not overlapped) = {gather_min:.1f} min: "
            f"{compute_min + gather_min:.1f} min of training"
        )
        auto = "bf16" if autocast_dtype("auto", device, SIZE) is torch.bfloat16 else "fp32"
        print(
            f"precision ({SIZE} px, our train step): fp32 {precisions['fp32']:.1f} img/s, "
            f"bf16 autocast {precisions['bf16']:.1f} img/s: bf16 "
            f"{precisions['bf16'] / precisions['fp32']:.2f}x fp32; compute.precision: auto "
            f"picks {auto} here (cpu_has_bf16: {cpu_has_bf16()})"
        )
        if args.memory:
            memory(work, 20_000, 3)
        ratios = {"data_path": median["ours data"] / median["ref data"],
                  "train_step": median["ours train"] / median["ref train"],
                  "bf16_vs_fp32": precisions["bf16"] / precisions["fp32"]}  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps({
                "device": str(device), "images": len(files), "workers": workers,
                "batch": [batch_l, batch_u], "img_per_s": median, "ratios": ratios,
                "paper_step_tflop": paper_step / 1e12, "gather_ms": gather * 1e3,
            }, indent=1))  # fmt: skip
        print(
            f"data-path speedup {ratios['data_path']:.1f}x, "
            f"train-step speedup {ratios['train_step']:.1f}x"
        )


if __name__ == "__main__":
    main()
