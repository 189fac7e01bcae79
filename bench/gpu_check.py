"""One prepared check of the CUDA paths and the speed claims on a GPU, in one run.

    python bench/gpu_check.py [--smoke] [--json gpu_check.json] [--parts tests,pipeline,...]
    python bench/gpu_check.py --carry .device     # here, before a GPU loan (docs/speed.md)

Parts, each timed, each allowed to fail without stopping the others (its error is reported):

  tests     pytest -m gpu (tests/test_gpu.py): bf16 autocast keeps losses and classifier fp32,
            the fused views compiled for the device equal the eager ones to 1e-5, pinned
            non-blocking batches equal plain copies, a checkpoint written on the device resumes
            there to the same model (bitwise, or the difference measured)
  pipeline  every stage of the default pipeline in order, in one process, in a temporary
            project: each stage's time, and the final accuracy
  speed     bench/speed.py: the reference design (DataLoader workers on every core) against
            ours, data path and train step, at the paper's batch (32 labeled + 128 unlabeled)
  nct       an NCT-CRC-HE-100K-sized run: --tiles tiles at 224 px made from the 32 real tiles
            of crc-tiles (random crops, flips and quarter turns, stain jitter), written as TIFs
            like NCT's and packed by the real download and prepare; then S5CL steps at the
            paper's batch without and with compute.compile: step time, images/s, peak GPU memory,
            GPU utilisation, and the projected time of the reference's 3,906 steps plus
            pseudo-labels over 100,000 tiles and evaluation of 3 models over 7,180
  frozen    bench/frozen.py: the features stage of a frozen ViT-S (passes/s), and s5cl steps
            through it against steps from its cache

`--smoke` runs the same code on the CPU at tiny sizes in about two minutes (tests/test_bench.py
runs it, so the check cannot rot between GPU loans): the gpu tests run on the CPU
(S5CL_GPU_TESTS_ON=cpu), 32 px, a few steps, and no compile variant (a minute on a CPU).

A torch other than the pinned one is reported, not fatal: a GPU machine has its own PyTorch.
The last line is `gpu check: N of M parts ok` (the exit code is 0 only when all are).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from shared_data import CRC_TILES, PBC, ROOT

from s5cl.config.params import load_params
from s5cl.model.network import S5CLNet, embed_and_predict
from s5cl.pipeline import stages
from s5cl.training.device import pick_device

PARTS = ("tests", "pipeline", "speed", "nct", "frozen")
REFERENCE_STEPS = 3906  # 5 epochs of NCT-CRC-HE-100K at 128 unlabeled images a step
NCT_TRAIN, NCT_TEST = 100_000, 7_180  # pseudo-labels over the training tiles, 3 models scored
README_ESTIMATE_MIN = (4.0, 8.0)  # docs/speed.md: at 60 and at 30 TFLOP/s
# Not on a GPU machine's image: carried as wheels (--carry). The stage code imports dvclive,
# and dvclive imports dvc; the rest is their import closure (measured with sys.modules).
CARRIED = (
    "pydantic", "pydantic_core", "annotated-types", "typing-inspection",
    "pytorch-metric-learning", "scikit-activeml", "makefun", "dvclive", "dvc", "dvc-data",
    "dvc-http", "dvc-objects", "dvc-render", "dvc-studio-client", "scmrepo", "dulwich",
    "funcy", "ruamel.yaml", "flatten-dict", "voluptuous", "pygtrie", "sqltrie", "diskcache",
    "dpath", "flufl.lock", "atpublic", "zc.lockfile", "configobj", "orjson", "platformdirs",
    "pydot", "PySocks", "wcwidth",
)  # fmt: skip
# A tiny pipeline for --smoke (the tests' sizes).
SMOKE_SETS = ["data.size=32", "warmup.steps=4", "warmup.eval_every=2", "s5cl.steps=3",
              "s5cl.batch_unlabeled=16", "s5cl.eval_every=3", "retrain.steps=3",
              "pseudolabel.threshold=0.0", "compute.fuse_augment=false"]  # fmt: skip


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(work: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = work()
    _sync()
    return time.perf_counter() - start, result


def pinned_torch() -> str:
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.strip().startswith('"torch=='):
            return line.split("==")[1].split('"')[0]
    return "unknown"


def environment(commit: str | None) -> dict:
    """What the figures belong to: commit, machine, GPU, driver, versions."""
    if commit is None:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True)  # fmt: skip
        commit = git.stdout.strip() or "unknown (pass --commit)"
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    cpu = models[0] if models else platform.processor()
    info = {
        "commit": commit,
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_pinned": pinned_torch(),
        "device": str(pick_device()),
    }
    if not torch.__version__.startswith(info["torch_pinned"]):
        info["version_note"] = (
            f"torch {torch.__version__} here, {info['torch_pinned']} pinned: the figures are "
            "this version's"
        )
    if torch.cuda.is_available():
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True,
        )  # fmt: skip
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                 "cuda": torch.version.cuda, "driver": smi.stdout.strip() or "unknown",
                 "bf16": torch.cuda.is_bf16_supported()}  # fmt: skip
    info["packages"] = {}
    for name in ("torchvision", "timm", "numpy", "pandas", "scikit-learn", *CARRIED[:7]):
        try:
            info["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info["packages"][name] = "missing"
    return info


# ---------------------------------------------------------------- the parts


def part_tests(args: argparse.Namespace, work: Path) -> dict:
    xml = work / "gpu-tests.xml"
    path = [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    if args.smoke:
        env["S5CL_GPU_TESTS_ON"] = "cpu"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q",
               "-p", "no:cacheprovider", "-o", "addopts=", f"--junitxml={xml}"]  # fmt: skip
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if not xml.exists():
        raise RuntimeError(f"pytest wrote no report:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    cases = []
    for case in ET.parse(xml).iter("testcase"):
        outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        properties = {p.get("name"): p.get("value") for p in case.iter("property")}
        cases.append({"test": case.get("name"), "outcome": outcome,
                      "seconds": float(case.get("time", 0)), **properties})  # fmt: skip
        print(f"  {outcome:7} {float(case.get('time', 0)):6.1f} s  {case.get('name')} "
              + " ".join(f"{k}={v}" for k, v in properties.items()))  # fmt: skip
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "skipped")}
    counts["failed"] += sum(c["outcome"] == "error" for c in cases)
    if counts["failed"] or not counts["passed"]:
        print(out.stdout[-3000:])
        raise RuntimeError(f"gpu tests: {counts}")
    return {**counts, "cases": cases}


def part_pipeline(args: argparse.Namespace, work: Path) -> dict:
    """The default pipeline's stages in their order, in-process (no DVC needed), each timed."""
    project = work / "pipeline"
    project.mkdir()
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    shutil.copytree(ROOT / "labels", project / "labels")
    params = load_params(project / "params.yaml", SMOKE_SETS if args.smoke else [])
    seconds = {}
    here = Path.cwd()
    os.chdir(project)
    try:
        for stage in stages.STAGES:
            seconds[stage.name], summary = timed(lambda s=stage: stages.function(s.name)(params))
            print(f"  {stage.name:12} {seconds[stage.name]:7.1f} s  {summary}")
        scores = json.loads(Path("metrics/evaluate.json").read_text())
    finally:
        os.chdir(here)
    return {
        "stage_seconds": seconds,
        "total_seconds": sum(seconds.values()),
        "final_accuracy": scores["final"]["accuracy"],
        "overrides": SMOKE_SETS if args.smoke else [],
    }


def _bench(script: str, flags: list[str], work: Path, timeout: float) -> dict:
    """bench/<script>.py with `flags`, its output shown indented, its --json returned."""
    out = work / f"{script}.json"
    command = [sys.executable, str(ROOT / "bench" / f"{script}.py"), *flags, "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    print("\n".join("  " + line for line in done.stdout.strip().splitlines()))
    if done.returncode != 0:
        raise RuntimeError(f"{script}.py failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def part_speed(args: argparse.Namespace, work: Path) -> dict:
    flags = ["--quick"] if args.smoke else ["--batch-unlabeled", "128"]
    return _bench("speed", flags, work, timeout=600)


def part_frozen(args: argparse.Namespace, work: Path) -> dict:
    flags = ["--quick"] if args.smoke else ["--images", "1920"]
    return _bench("frozen", flags, work, timeout=600)


def _tile_chunk(job: tuple[list[str], Path, int, int, int, int]) -> None:
    """Tiles start..start+count-1 (a process each chunk): a random square crop of a random
    original (half to all of its side), resized to `size`, flipped and turned, stain-jittered
    (s5cl.data.augment's HED jitter, sigma 0.05), saved as an uncompressed TIF in its class
    folder."""
    from PIL import Image

    from s5cl.data.augment import apply_stains, sample_stains

    sources, dest, start, count, size, seed = job
    torch.set_num_threads(1)
    rng = np.random.default_rng([seed, start])
    originals = [np.asarray(Image.open(s).convert("RGB")) for s in sources]
    picks = rng.integers(len(originals), size=count)
    tiles = np.empty((count, size, size, 3), np.uint8)
    for i, pick in enumerate(picks):
        image = originals[pick]
        side = int(rng.integers(image.shape[0] // 2, image.shape[0] + 1))
        y, x = (
            rng.integers(0, image.shape[0] - side + 1),
            rng.integers(0, image.shape[1] - side + 1),
        )
        crop = Image.fromarray(image[y : y + side, x : x + side]).resize((size, size))
        crop = np.rot90(np.asarray(crop), int(rng.integers(4)))
        tiles[i] = crop[:, ::-1] if rng.integers(2) else crop
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float().div_(255)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    x = apply_stains(x, sample_stains(count, 0.05, gen))
    tiles = x.mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, pick in enumerate(picks):
        name = Path(sources[pick]).parent.name
        Image.fromarray(tiles[i]).save(dest / name / f"{name}-{start + i:06d}.tif")


def make_tiles(dest: Path, count: int, size: int, seed: int = 0) -> Path:
    """`count` NCT-like tiles from the 32 real crc-tiles, written by every core."""
    sources = sorted(str(p) for p in CRC_TILES.glob("*/*.png"))
    if not sources:
        raise FileNotFoundError(f"{CRC_TILES}: no tiles (../shared/data/crc-tiles is needed)")
    for name in {Path(s).parent.name for s in sources}:
        (dest / name).mkdir(parents=True, exist_ok=True)
    chunk = 500
    jobs = [(sources, dest, s, min(chunk, count - s), size, seed) for s in range(0, count, chunk)]
    workers = min(len(jobs), os.cpu_count() or 1)
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(_tile_chunk, jobs)
    return dest


class Utilisation:
    """GPU utilisation (%) sampled every 0.2 s in a thread while a `with` block runs."""

    def __enter__(self) -> Utilisation:
        self.samples: list[float] = []
        self.running = torch.cuda.is_available()
        if self.running:
            try:
                torch.cuda.utilization()
            except Exception:  # no NVML here: report none rather than fail the part
                self.running = False
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.samples.append(float(torch.cuda.utilization()))
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def part_nct(args: argparse.Namespace, work: Path) -> dict:
    from speed import our_training, pack

    count, size = (64, 32) if args.smoke else (args.tiles, 224)
    warm, timed_steps = (1, 2) if args.smoke else (5, 60)
    seconds, _ = timed(lambda: make_tiles(work / "nct-tiles", count, size))
    print(f"  {count} tiles at {size} px made in {seconds:.1f} s")
    seconds_pack, data = timed(lambda: pack(work / "nct-tiles", work, size))
    shutil.rmtree(work / "nct-tiles")
    print(f"  download + prepare: {seconds_pack:.1f} s ({count / seconds_pack:.0f} tiles/s)")
    device = pick_device()
    result = {"tiles": count, "size": size, "make_tiles_s": seconds, "pack_s": seconds_pack,
              "batch": [32, 128], "steps_timed": timed_steps, "runs": {}}  # fmt: skip
    for compile in (False,) if args.smoke else (False, True):
        torch.manual_seed(0)
        model = S5CLNet(data.num_classes)
        run = our_training(data, model, 32, 128, compile=compile, fuse=not args.smoke)
        compiling, _ = timed(lambda r=run: r(1))  # the compilers' one-off work, allocations
        first, _ = timed(lambda r=run: r(warm))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with Utilisation() as util:
            total, _ = timed(lambda r=run: r(warm + timed_steps))
        step = (total - first) / timed_steps  # the setup is in both runs: it cancels
        name = "compile" if compile else "eager"
        result["runs"][name] = {
            "first_step_s": compiling,
            "step_s": step,
            "img_per_s": 160 / step,
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30
            if device.type == "cuda" else None,
            "gpu_utilisation_pct": util.mean,
        }  # fmt: skip
        busy = "" if util.mean is None else f", GPU busy {util.mean:.0f}% of the time"
        print(f"  {name}: {step * 1e3:.1f} ms a step ({160 / step:.0f} img/s; the first step, "
              f"compiling included, {compiling:.1f} s){busy}")  # fmt: skip
    rows = np.arange(min(len(data.labels), 20_000))
    infer, _ = timed(lambda: embed_and_predict(model.eval(), data, rows, device, 512))
    rate = len(rows) / infer
    best = min(r["step_s"] for r in result["runs"].values())
    projected = {
        "training_min": REFERENCE_STEPS * best / 60,
        "pseudo_labels_min": NCT_TRAIN / rate / 60,
        "evaluation_min": 3 * NCT_TEST / rate / 60,
    }
    projected["total_min"] = sum(projected.values())
    result |= {"inference_img_per_s": rate, "projected": projected,
               "readme_estimate_min": README_ESTIMATE_MIN,
               "reference_notebook_min": 24.0}  # fmt: skip
    print(f"  inference {rate:.0f} img/s; projected: {REFERENCE_STEPS} steps "
          f"{projected['training_min']:.2f} min + pseudo-labels "
          f"{projected['pseudo_labels_min']:.2f} + evaluation {projected['evaluation_min']:.2f}"
          f" = {projected['total_min']:.2f} min "
          f"(docs' estimate {README_ESTIMATE_MIN[0]:g}-{README_ESTIMATE_MIN[1]:g} min, the "
          "reference notebook ~24 min)")  # fmt: skip
    return result


# ---------------------------------------------------------------- before a loan: --carry


def carry(dest: Path) -> None:
    """Wheels of CARRIED at the versions installed here (for the GPU machine's Python 3.12)
    and a copy of the real data the check reads, into `dest` (which .git/info/exclude must
    ignore); then the command to run there."""
    wheels = dest / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    specs = [f"{name}=={metadata.version(name)}" for name in CARRIED]
    platforms = [f"--platform=manylinux_{v}_x86_64" for v in ("2_17", "2_24", "2_27", "2_28")]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--python-version=3.12", "--implementation=cp", *platforms, "-d", str(wheels), *specs],
        check=True,
    )  # fmt: skip
    for folder in (PBC, CRC_TILES):
        target = dest / "shared" / "data" / folder.name
        if not target.exists():
            shutil.copytree(folder, target)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) / 2**20
    commit = environment(None)["commit"]
    print(f"{dest}: {size:.0f} MiB. On the GPU machine (device run, carry [{dest}]):")
    print(
        f"python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "
        f"{dest}/wheels/*.whl && PYTHONPATH=/tmp/site:src S5CL_SHARED_DATA={dest}/shared/data "
        f"PYTHONUNBUFFERED=1 python3 bench/gpu_check.py --commit {commit} "
        "--json $OUT/gpu_check.json"
    )


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the same code on the CPU, tiny")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset")
    parser.add_argument("--tiles", type=int, default=NCT_TRAIN, help="nct: tiles to make")
    parser.add_argument("--json", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--commit", help="the commit measured (where the copy has no .git)")
    parser.add_argument("--carry", type=Path, metavar="DIR", help="prepare wheels + data; exit")
    args = parser.parse_args()
    if args.carry:
        return carry(args.carry)
    if args.smoke:
        os.environ["S5CL_DEVICE"] = "cpu"  # the smoke is the CPU rehearsal, GPU or not
    parts = args.parts.split(",")
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")

    start = time.perf_counter()
    summary: dict = {
        "mode": "smoke" if args.smoke else "full",
        "environment": environment(args.commit),
    }
    env = summary["environment"]
    where = (f"{env['gpu']} (driver {env['driver']}, CUDA {env['cuda']})" if "gpu" in env
             else env["device"])  # fmt: skip
    print(f"gpu check ({summary['mode']}) at {env['commit']}: {where}, {env['cpu']} x "
          f"{env['cpus']}, torch {env['torch']} (pinned {env['torch_pinned']})")  # fmt: skip
    if "version_note" in env:
        print(f"note: {env['version_note']}")
    functions = {"tests": part_tests, "pipeline": part_pipeline, "speed": part_speed,
                 "nct": part_nct, "frozen": part_frozen}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="s5cl-gpu-check-") as tmp:
        for name in parts:
            print(f"\n== {name}", flush=True)
            (Path(tmp) / name).mkdir()
            begun = time.perf_counter()
            try:
                result = {"ok": True, **functions[name](args, Path(tmp) / name)}
            except Exception as error:  # reported, and the other parts still run
                result = {"ok": False, "error": f"{type(error).__name__}: {error}"}
                print(f"  FAILED: {result['error']}")
            result["seconds"] = time.perf_counter() - begun
            summary[name] = result
            args.json.write_text(json.dumps(summary, indent=1, default=str))  # after each part
    summary["seconds"] = time.perf_counter() - start
    args.json.write_text(json.dumps(summary, indent=1, default=str))
    print_table(summary, parts)
    ok = sum(summary[p]["ok"] for p in parts)
    print(f"gpu check: {ok} of {len(parts)} parts ok in {summary['seconds']:.0f} s ({args.json})")
    sys.exit(0 if ok == len(parts) else 1)


def print_table(summary: dict, parts: list[str]) -> None:
    """The figures that answer the issue, one line each."""
    print(f"\n{'part':10}{'ok':>4}{'s':>8}  figures")
    for name in parts:
        r = summary[name]
        if not r["ok"]:
            figures = r["error"].splitlines()[0][:100]
        elif name == "tests":
            resume = next((c for c in r["cases"] if "resume_bitwise" in c), {})
            figures = (f"{r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped; "
                       f"resume bitwise {resume.get('resume_bitwise')}, max |dw| "
                       f"{resume.get('resume_max_abs_weight_difference')}")  # fmt: skip
        elif name == "pipeline":
            slowest = sorted(r["stage_seconds"].items(), key=lambda kv: -kv[1])[:3]
            figures = (f"{r['total_seconds']:.0f} s in all (" + ", ".join(
                f"{k} {v:.0f} s" for k, v in slowest) + f"), final accuracy "
                f"{r['final_accuracy']:.3f}")  # fmt: skip
        elif name == "speed":
            figures = (f"data path {r['ratios']['data_path']:.1f}x, train step "
                       f"{r['ratios']['train_step']:.1f}x the reference (batch "
                       f"{r['batch'][0]} + {r['batch'][1]})")  # fmt: skip
        elif name == "nct":
            runs = ", ".join(f"{k} {v['step_s'] * 1e3:.0f} ms/step ({v['img_per_s']:.0f} img/s)"
                             for k, v in r["runs"].items())  # fmt: skip
            p = r["projected"]
            figures = (
                f"{runs}; projected {p['training_min']:.2f} min for {REFERENCE_STEPS} "
                f"steps, {p['total_min']:.2f} min with pseudo-labels and evaluation"
            )
        else:
            figures = (f"features {r['features_passes_per_s']:.0f} passes/s; step through "
                       f"{r['step_through_s'] * 1e3:.0f} ms, from cache "
                       f"{r['step_cache_s'] * 1e3:.1f} ms")  # fmt: skip
        print(f"{name:10}{'yes' if r['ok'] else 'NO':>4}{r['seconds']:>8.0f}  {figures}")


if __name__ == "__main__":
    main()
