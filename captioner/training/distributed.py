"""Data-parallel training with PyTorch DDP, started by ``torchrun``.

``torchrun --nproc_per_node N -m captioner.train --data ... --out ...`` starts N copies of ``captioner train``;
torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) tells each one
its place. Every process builds the same model from the same seed, walks the same global batches and trains on
its share of each (every ``world``-th caption); DDP averages the gradients, and the loss is scaled so that the
averaged gradient is the gradient of the whole global batch's mean loss: N processes with global batch B follow
one process with batch B. Rank 0 alone builds the feature cache (the others wait, then read it), writes the
logs, the model and the resume state, and logs progress.

Backends: NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``), gloo on the CPU. Several machines: run the
same torchrun command on each with ``--nnodes M --node_rank I --rdzv_endpoint HOST:PORT`` (see the README).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """This process's place in a (possibly one-process) training job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = DistContext()


def from_env() -> DistContext:
    """The context torchrun's environment describes (one process when ``WORLD_SIZE`` is unset or 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return DistContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def setup(ctx: DistContext, device: torch.device) -> torch.device:
    """Join the process group (gloo on the CPU, NCCL on CUDA) and return this process's device."""
    if not ctx.active:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if not ctx.is_main:  # rank 0 speaks for the job
        logging.getLogger("captioner").setLevel(logging.WARNING)
    logger.info("distributed training: %d processes (%s)", ctx.world, dist.get_backend())
    return device


def teardown(ctx: DistContext) -> None:
    """Leave the process group (after a last barrier, so no process exits while another still talks)."""
    if ctx.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextmanager
def main_first(ctx: DistContext) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. fills the feature cache); the others run it after, reading what it made."""
    if ctx.active and not ctx.is_main:
        dist.barrier()
    yield
    if ctx.active and ctx.is_main:
        dist.barrier()


def shard(ctx: DistContext, n: int) -> tuple[torch.Tensor, bool]:
    """This process's rows of a global batch of ``n``: every ``world``-th from ``rank``.

    Returns:
        ``(index (n_r,), empty)``: when the batch has fewer rows than processes, a process without a row gets row
        0 with ``empty`` True, to be weighted 0 (it must still take part in the gradient all-reduce).
    """
    index = torch.arange(ctx.rank, n, ctx.world)
    if len(index) == 0:
        return torch.zeros(1, dtype=torch.long), True
    return index, False


def reduce_mean(ctx: DistContext, value: torch.Tensor) -> float:
    """The sum over processes of ``value / world`` (a scalar tensor)."""
    total = value.detach().float() / ctx.world
    dist.all_reduce(total)
    return float(total)


def wrap(ctx: DistContext, module: torch.nn.Module, device: torch.device) -> torch.nn.Module | None:
    """``module`` in DistributedDataParallel (None for one process)."""
    if not ctx.active:
        return None
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
