"""Several processes (torchrun, DDP) train the model one process trains on the global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from s5cl.config.params import load_params, validate
from s5cl.model.network import S5CLNet
from s5cl.pipeline import stages
from s5cl.training import distributed
from s5cl.training.methods import UnlabeledTargets, make_objective

from .conftest import ROOT, TINY, VENV_BIN, digit_views, run, write_params

METHODS = ("s5cl", "supcon", "ce", "fixmatch", "mpl")
N_LABELED = N_UNLABELED = 16  # digit_views: 4 classes x 4 labeled images, 16 unlabeled


def _shard_views(x: torch.Tensor, uses_unlabeled: bool) -> torch.Tensor:
    """This rank's rows of each block of views (labeled weak, labeled strong, unlabeled weak,
    unlabeled strong), in the layout an objective takes."""
    sizes = [N_LABELED] * 2 + ([N_UNLABELED] * 2 if uses_unlabeled else [])
    blocks = x[: sum(sizes)].split(sizes)
    return torch.cat([b[torch.from_numpy(distributed.shard(np.arange(len(b))))] for b in blocks])


def one_step(method: str, dtype: torch.dtype) -> dict:
    """One real training step of `method` (its objective's update: forward, loss, backward,
    optimizer step) on this rank's shard of a fixed batch of real digits; the logged values
    (averaged over ranks, as train.py logs them) and the gradients of every parameter."""
    x, y_l = digit_views()
    x = x.to(dtype)
    positions = np.arange(N_UNLABELED)  # the unlabeled images' positions in the unlabeled set
    params = validate({"method": method, "fixmatch": {"threshold": 0.5}})
    torch.manual_seed(0)
    model = S5CLNet(num_classes=10).to(dtype).train()
    targets = UnlabeledTargets("instance", 0.7, 1.0, 0.7, 1.0)
    objective = make_objective(stages.get("s5cl").phase, model, params, 10, targets)
    objective.distribute()
    x_rank = _shard_views(x, objective.uses_unlabeled)
    y_rank = y_l[distributed.shard(np.arange(N_LABELED))]
    parts, _ = objective.update(x_rank, y_rank, distributed.shard(positions), step=0)
    networks = {"model": model, "teacher": getattr(objective, "teacher", None)}
    grads = {
        f"{network}.{name}": p.grad.detach().clone()
        for network, module in networks.items()
        if module is not None
        for name, p in module.named_parameters()
    }
    return {"parts": distributed.mean(parts), "grads": grads}


def _worker(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world
    )
    try:
        results = {(m, t): one_step(m, t) for m in METHODS for t in (torch.float64, torch.float32)}
        if distributed.is_main():
            torch.save(results, Path(folder) / "ddp.pt")
    finally:
        dist.destroy_process_group()


# (loss, gradient) tolerances; gradients per tensor, relative to its largest entry. In float64
# the two runs agree to rounding (measured: <= 5e-14). In float32, rounding differences flip a
# few ReLUs and max-pool choices on the digits' flat backgrounds, which moves some early-layer
# gradients by up to 3e-2. Real faults, measured: per-rank BatchNorm moves gradients by
# 1.7-1.9 and the loss by 5e-2-4e-1; SupCon over one rank's views, by 0.8 and 0.6-1.3.
# (MPL logs h after the student's Adamax step, ~lr * sign(gradient): float32 moves it by ~4e-5.)
TOLERANCE = {torch.float64: (1e-12, 1e-9), torch.float32: (1e-4, 1e-1)}


@pytest.mark.slow(35)
def test_two_gloo_processes_give_the_loss_and_gradients_of_one_process_on_the_whole_batch(
    tmp_path: Path,
):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp.pt")
    report = []
    for (method, dtype), got in ddp.items():
        single = one_step(method, dtype)  # this process, no process group: the whole batch
        assert single["parts"].keys() == got["parts"].keys()
        assert single["grads"].keys() == got["grads"].keys()
        loss_diff = max(abs(single["parts"][k] - got["parts"][k]) for k in single["parts"])
        relative = {  # per tensor, on its own scale
            name: float((got["grads"][name] - g).abs().max() / g.abs().max().clamp(min=1e-12))
            for name, g in single["grads"].items()
        }
        worst = max(relative, key=relative.get)
        report.append(
            f"{method} {str(dtype)[6:]}: loss {single['parts']['loss']:.6f}, |loss diff| "
            f"{loss_diff:.1e}, max relative grad diff {relative[worst]:.1e} ({worst})"
        )
        loss_tolerance, grad_tolerance = TOLERANCE[dtype]
        assert loss_diff < loss_tolerance and relative[worst] < grad_tolerance, report[-1]
    print("\n".join(report))


def test_a_shard_split_is_disjoint_and_covers_the_global_batch_in_order(tmp_path: Path):
    mp.spawn(_shards, args=(3, str(tmp_path)), nprocs=3, join=True)
    pieces = [np.load(tmp_path / f"rank{r}.npy") for r in range(3)]
    assert np.array_equal(np.concatenate(pieces), np.arange(100, 112))
    views = json.loads((tmp_path / "views.json").read_text())
    assert views == [[0, 0], [1, 1], [2, 2], [0, 1], [1, 2], [2, 3]]  # weak views, then strong


def _shards(rank: int, world: int, folder: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world
    )
    try:
        order = distributed.same_on_every_rank(np.arange(100, 112) if rank == 0 else None)
        np.save(Path(folder) / f"rank{rank}.npy", distributed.shard(order))
        # rank r's single image: weak view [r, r], strong view [r, r + 1]
        local = torch.tensor([[rank, rank], [rank, rank + 1]], dtype=torch.float32)
        gathered = distributed.gather_views(local)
        if rank == 0:
            (Path(folder) / "views.json").write_text(json.dumps(gathered.int().tolist()))
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------ the s5cl stage under torchrun


def _torchrun(stage: str, *sets: str) -> list[str]:
    return [
        str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node", "2",
        f"stages/{stage}.py", *[f"--set={s}" for s in sets],
    ]  # fmt: skip


@pytest.fixture(scope="module")
def warmed_up(tmp_path_factory) -> Path:
    """A project with download..warmup done (in this process: each stage script would spend
    ~10 s importing), for s5cl and for MPL; tests take copies."""
    folder = tmp_path_factory.mktemp("warmed")
    for name in ("stages", "src"):
        shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "params.yaml", folder / "params.yaml")
    quick = {"s5cl.steps": 6, "s5cl.eval_every": 3, "checkpoint.every": 2}
    write_params(folder, TINY | quick | {"compute.fuse_augment": False})  # no compile wait
    previous = Path.cwd()
    os.chdir(folder)
    try:
        params = load_params("params.yaml")
        for stage in ("download", "prepare", "split", "warmup"):
            stages.function(stage)(params)
        shutil.copy("models/warmup.pt", "models/warmup-s5cl.pt")
        stages.function("warmup")(load_params("params.yaml", ["method=mpl"]))
        shutil.move("models/warmup.pt", "models/warmup-mpl.pt")
    finally:
        os.chdir(previous)
    return folder


def _copy(warmed_up: Path, tmp_path: Path, method: str) -> Path:
    project = tmp_path / "project"
    shutil.copytree(warmed_up, project)
    shutil.copy(project / f"models/warmup-{method}.pt", project / "models/warmup.pt")
    return project


@pytest.mark.slow(40)
def test_torchrun_trains_the_s5cl_stage_logs_once_and_resumes_exactly_after_a_kill(
    warmed_up, tmp_path
):
    project = _copy(warmed_up, tmp_path, "s5cl")
    command = _torchrun("s5cl")
    done = run(command, project)
    assert done.stdout.count("s5cl: s5cl: 6 steps") == 1, done.stdout  # rank 0 prints
    first = torch.load(project / "models/s5cl.pt", weights_only=False)
    logged = pd.read_csv(project / "metrics/s5cl/plots/metrics/train/loss.tsv", sep="\t")
    assert logged["step"].tolist() == list(range(6))  # once per step, not once per rank
    assert not list((project / "checkpoints").glob("s5cl-*.pt"))

    # Kill torchrun and its workers (each in a session of its own) after rank 0's first
    # checkpoint, as a node failure would, then start it again.
    (project / "models/s5cl.pt").unlink()
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    killed = subprocess.Popen(command, cwd=project, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (found := list((project / "checkpoints").glob("s5cl-*.pt"))):
        if killed.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    tree = psutil.Process(killed.pid)
    for process in [*tree.children(recursive=True), tree]:
        process.kill()
    killed.wait()
    (checkpoint,) = found
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["step"] < 6 and len(saved["rng"]) == 2  # rank 0 wrote both ranks' RNGs
    assert saved["fingerprint"]["processes"] == 2

    resumed = run(command, project)  # its checkpoint is named by its run: 2 processes
    assert f"resuming from {checkpoint.relative_to(project)} at step {saved['step']} of 6" in (
        resumed.stdout
    )
    second = torch.load(project / "models/s5cl.pt", weights_only=False)
    for name, weights in first["model"].items():
        assert torch.equal(weights, second["model"][name]), name  # bit for bit
    assert second["final"] == first["final"]


def test_torchrun_trains_mpl_student_and_teacher(warmed_up, tmp_path):
    project = _copy(warmed_up, tmp_path, "mpl")
    done = run(_torchrun("s5cl", "method=mpl"), project)
    assert done.stdout.count("s5cl: mpl: 6 steps") == 1, done.stdout
    model = torch.load(project / "models/s5cl.pt", weights_only=False)
    warm = torch.load(project / "models/warmup.pt", weights_only=False)
    for network in ("model", "teacher"):  # both trained, from the warm-up weights
        name = "encoder.conv1.weight"
        assert not torch.equal(model[network][name], warm["model"][name]), network


def test_torchrun_refuses_what_cannot_be_split_and_stages_that_run_once(warmed_up, tmp_path):
    project = _copy(warmed_up, tmp_path, "s5cl")
    odd = run(_torchrun("s5cl", "s5cl.batch_unlabeled=15"), project, check=False)
    assert odd.returncode != 0
    assert "s5cl.batch_unlabeled=15 does not split over 2 processes; use a multiple of 2" in (
        odd.stderr
    )
    once = run(_torchrun("evaluate"), project, check=False)
    assert once.returncode != 0
    assert "stages/evaluate.py runs as one process; start it with python, not torchrun" in (
        once.stderr
    )
