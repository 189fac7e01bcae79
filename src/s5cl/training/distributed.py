"""Several processes training one model: `torchrun --nproc-per-node N stages/s5cl.py`.

The N processes (ranks) train exactly the model one process would train on the global batch:

- every rank draws the same global batches (the epoch orders are rank 0's, sent to all) and
  keeps its own contiguous shard of each (`shard`): `batch_labeled` and `batch_unlabeled` stay
  the global batch sizes, whatever N;
- SupCon sees the embeddings of the whole global batch (`gather_views`): an all-gather whose
  backward sends each rank the gradient of its own embeddings;
- BatchNorm normalises with the statistics of the global batch (`global_batch_norm`);
- DDP averages the gradients; values that are logged are averaged over ranks (`mean`);
- only rank 0 validates, logs and writes checkpoints and models.

Each rank draws its own augmentations (rank 0 the single-process ones), so N processes see
other random views than one process would; the loss and gradients of a given set of views are
the same (tests/test_distributed.py). With one process every function here is a no-op, so a
plain `python stages/s5cl.py` runs exactly the single-process code.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as collectives
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from s5cl.errors import UserError
from s5cl.training.device import pick_device


def launched_processes() -> int:
    """How many processes torchrun started for this run (WORLD_SIZE), 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, the one process that validates, logs and writes files."""
    return rank() == 0


@contextlib.contextmanager
def processes() -> Iterator[None]:
    """The process group of a training stage started by torchrun (nothing without torchrun):
    NCCL on GPUs, one per process (device.pick_device), else gloo on the CPU."""
    if launched_processes() == 1:
        yield
        return
    device = pick_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def check_divides(size: int, name: str) -> None:
    """A global batch must split evenly over the processes (equal shards keep means exact)."""
    n = world_size()
    if size % n:
        raise UserError(
            f"{name}={size} does not split over {n} processes; use a multiple of {n} "
            "(it is the global batch, shared by all processes)"
        )


def shard(batch: np.ndarray) -> np.ndarray:
    """This rank's contiguous share of a global batch (the whole batch with one process)."""
    n = len(batch) // world_size()
    return batch[rank() * n : (rank() + 1) * n]


def same_on_every_rank(order: np.ndarray) -> np.ndarray:
    """Rank 0's `order` on every rank: an epoch of a batch stream, drawn once."""
    if not active():
        return order
    box = [order]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(values: torch.Tensor) -> torch.Tensor:
    """B_local x ... on each rank -> B_global x ..., rank 0's rows first (gradients flow back
    to the rank that made each row)."""
    if not active():
        return values
    return collectives.all_gather_single(values.contiguous(), 0, dist.group.WORLD)


def gather_views(embeddings: torch.Tensor) -> torch.Tensor:
    """2B_local x D (B weak views, then their B strong views) on each rank -> 2B_global x D in
    the single-process layout: the weak views of ranks 0..N-1, then their strong views."""
    if not active():
        return embeddings
    everyone = gather(embeddings)  # rank 0 weak, rank 0 strong, rank 1 weak, ...
    n, d = world_size(), embeddings.shape[1]
    by_rank = everyone.reshape(n, 2, -1, d)
    return by_rank.transpose(0, 1).reshape(-1, d)


def mean(values: dict[str, float]) -> dict[str, float]:
    """The mean over ranks of each logged value (a rank's loss covers its shard only)."""
    if not active():
        return values
    keys = sorted(values)
    packed = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(packed)  # gloo has no AVG
    return dict(zip(keys, (packed / world_size()).tolist(), strict=True))


def all_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank, so all stop together or none does."""
    finite = bool(torch.isfinite(loss.detach()).all())
    if not active():
        return finite
    flag = torch.tensor([int(finite)], device=loss.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def gather_objects(value: Any) -> list[Any]:
    """Every rank's `value` (picklable), in rank order, on every rank."""
    if not active():
        return [value]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with the statistics of the global batch of all processes, on the CPU.

    torch.nn.SyncBatchNorm does this on GPUs, but torch 2.14 has no CPU kernels for it, and the
    CPU (gloo) is where tests check that N processes train like one. The same parameters and
    buffers as BatchNorm2d, so checkpoints are interchangeable; alone or in eval mode it is
    BatchNorm2d. x: B x C x H x W."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        x = x.to(torch.promote_types(x.dtype, torch.float32))  # as BatchNorm under autocast
        dims = (0, 2, 3)
        world = dist.group.WORLD
        count = x.numel() // x.shape[1] * world_size()  # shards are equal (check_divides)
        mean = collectives.all_reduce(x.sum(dims), "sum", world) / count
        centred = x - mean[None, :, None, None]
        var = collectives.all_reduce(centred.square().sum(dims), "sum", world) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (
                    1 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                )
                unbiased = var * count / max(count - 1, 1)
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(unbiased, momentum)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def _cpu_global_batch_norm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine,
                child.track_running_stats,
            )  # fmt: skip
            new.weight, new.bias = child.weight, child.bias  # the same Parameters: the
            for buffer in ("running_mean", "running_var", "num_batches_tracked"):  # optimizer
                setattr(new, buffer, getattr(child, buffer))  # already holds them
            new.train(child.training)
            setattr(module, name, new)
        else:
            _cpu_global_batch_norm(child)


def global_batch_norm(model: nn.Module) -> nn.Module:
    """BatchNorm layers of `model` normalise over the global batch (in place; parameters and
    buffers are kept, so an optimizer built before still holds them)."""
    if next(model.parameters()).is_cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    _cpu_global_batch_norm(model)
    return model


def data_parallel(model: nn.Module) -> nn.Module:
    """What a training step calls: `model` itself with one process; with several, DDP around
    it (gradients averaged over ranks) and global BatchNorm."""
    if not active():
        return model
    model = global_batch_norm(model)
    device_ids = [torch.cuda.current_device()] if next(model.parameters()).is_cuda else None
    return DistributedDataParallel(model, device_ids=device_ids)
