"""How `prepare` scales: throughput (images/s) and peak memory on pbc-240 (1,920 real JPEGs) and
on a synthetic 20,000-image folder, measured side by side in one run.

    python bench/prepare_scaling.py [--sizes 32 224] [--workers N] [--count 20000] [--quick]

The synthetic folder holds hard links (or copies) of the pbc-240 JPEGs under new names in
8 class folders, so every image costs a real JPEG decode. Each measurement runs in a fresh
process; peak RSS is that process's (VmHWM: getrusage's ru_maxrss would carry over this
script's own peak across exec) and, separately, the largest decoding worker's.
If memory is bounded, the 20,000-image peak is close to the 1,920-image one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from shared_data import PBC

MEASURE = """
import json, resource, sys, time
from pathlib import Path
from s5cl.data.packing import pack_images
raw, out, size, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
start = time.perf_counter()
stats = pack_images(raw, out, size, workers)
seconds = time.perf_counter() - start
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({
    "images": stats["shape"][0], "seconds": seconds,
    "rss_main_mb": int(peak.split()[1]) / 1024,
    "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
}))
"""

LIST = """
import sys
from pathlib import Path
from s5cl.data.registry import download_dataset
from s5cl.config.params import DataParams
download_dataset(DataParams(name="folder", root=sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[2]))
"""


def synthetic_folder(dest: Path, count: int) -> Path:
    """`count` images in pbc-240's 8 class folders, linked from its real JPEGs round-robin
    over the classes (so even 100 images hold all 8)."""
    by_class = [sorted(folder.glob("*.jpg")) for folder in sorted(PBC.iterdir()) if folder.is_dir()]
    sources = [path for row in zip(*by_class, strict=True) for path in row]  # 240 a class
    for i in range(count):
        src = sources[i % len(sources)]
        target = dest / src.parent.name / f"{i:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, target)
        except OSError:
            shutil.copyfile(src, target)
    return dest


def measure(root: Path, work: Path, size: int, workers: int) -> dict:
    raw = work / f"raw-{root.name}"
    if not (raw / "manifest.parquet").exists():
        subprocess.run([sys.executable, "-c", LIST, str(root), str(raw)], check=True,
                       stderr=subprocess.DEVNULL)  # fmt: skip
    out = work / f"packed-{root.name}-{size}"
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(raw), str(out), str(size), str(workers)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    shutil.rmtree(out)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8))
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument(
        "--quick", action="store_true", help="16 px, 1 worker, 100 synthetic images (tests)"
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.workers, args.count = [16], 1, 100
    if not PBC.is_dir():
        sys.exit(f"{PBC} is absent: this benchmark reads ../shared/data/pbc-240")
    with tempfile.TemporaryDirectory(prefix="s5cl-bench-") as tmp:
        work = Path(tmp)
        big = synthetic_folder(work / f"synthetic-{args.count}", args.count)
        print(f"prepare, {args.workers} decoding processes, {os.cpu_count()} CPUs")
        header = f"{'dataset':>16} {'size':>5} {'images':>7} {'img/s':>7}"
        print(f"{header} {'peak RSS main':>14} {'peak RSS worker':>16}")
        for size in args.sizes:
            rows = [measure(root, work, size, args.workers) for root in (PBC, big)]
            for name, row in zip(("pbc-240", big.name), rows, strict=True):
                row["rate"] = row["images"] / row["seconds"]
                print(
                    f"{name:>16} {size:>5} {row['images']:>7} {row['rate']:>7.0f}"
                    f" {row['rss_main_mb']:>11.0f} MB {row['rss_worker_mb']:>13.0f} MB"
                )
            small, large = rows
            print(
                f"{'ratio':>16} {size:>5} {large['images'] / small['images']:>6.1f}x"
                f" {large['rate'] / small['rate']:>6.2f}x"
                f" {large['rss_main_mb'] / small['rss_main_mb']:>13.2f}x"
                f" {large['rss_worker_mb'] / small['rss_worker_mb']:>15.2f}x"
            )


if __name__ == "__main__":
    main()
