"""Data-parallel training over several processes: torch's launcher, torch's DDP, slimserve's seams.

``slimserve train --nproc N`` launches N local workers with torch's elastic launcher (the
library behind ``torchrun``, c10d rendezvous on loopback); ``torchrun`` itself starts the
same workers on one or several machines. Either way every worker runs ``train()`` and
joins the process group from the environment the launcher sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``).

What makes N processes train the model one process would: every rank draws the same
per-epoch order (the sampler generator is seeded from ``(seed, epoch)`` on every rank) and
takes its own contiguous slice of each global batch (``training.tensors.batches(shard=)``,
what ``DistributedSampler`` does for a map-style dataset), DDP averages the gradients, so
the optimizer steps on the global batch's mean gradient on every rank.
"""

import datetime
import hashlib
import logging
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from slimserve.errors import SlimserveError

T = TypeVar("T")
# Long enough for rank 0 to write a checkpoint while the others wait at the barrier.
TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 when alone)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder and prints; the others only train."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int] | None:
        """``(rank, size)`` for ``batches(shard=)``; None when alone."""
        return (self.rank, self.size) if self.size > 1 else None


def launched_world() -> World | None:
    """The world torchrun (or ``launch``) put this process in, or None outside one."""
    if "WORLD_SIZE" not in os.environ:
        return None
    env = os.environ
    return World(
        rank=int(env["RANK"]),
        size=int(env["WORLD_SIZE"]),
        local_rank=int(env.get("LOCAL_RANK", 0)),
        local_size=int(env.get("LOCAL_WORLD_SIZE", 1)),
    )


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes (NCCL has no CPU tensors)."""
    return "nccl" if device.type == "cuda" else "gloo"


def process_device(device: torch.device, world: World) -> torch.device:
    """One GPU per local rank; CPU processes share the machine's cores."""
    if device.type != "cuda" or world.size == 1:
        return device
    if world.local_rank >= torch.cuda.device_count():
        raise SlimserveError(
            f"local rank {world.local_rank} has no GPU of its own ({torch.cuda.device_count()} visible); "
            "start at most one process per GPU"
        )
    torch.cuda.set_device(world.local_rank)
    return torch.device("cuda", world.local_rank)


def threads_per_process(world: World) -> int:
    """The machine's cores split between its processes, so N workers do not oversubscribe them."""
    return max(1, (os.cpu_count() or 1) // world.local_size)


def join(world: World, device: torch.device) -> bool:
    """Join the launcher's process group; True when this call created it (and must destroy it)."""
    if world.size == 1 or dist.is_initialized():
        return False
    dist.init_process_group(
        backend_for(device), timeout=TIMEOUT, device_id=device if device.type == "cuda" else None
    )
    return True


def leave(created: bool) -> None:
    if created:
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device, world: World) -> nn.Module:
    """DDP around ``model`` (parameters broadcast from rank 0, gradients averaged); itself alone.

    The wrapper shares the model's parameters, so the unwrapped model is what evaluates and
    what rank 0 saves. BatchNorm buffers are broadcast from rank 0 at every forward, so all
    ranks end with the same buffers too.
    """
    if world.size == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sync_buffers(model: nn.Module, world: World) -> None:
    """Rank 0's BatchNorm running statistics on every rank.

    DDP broadcasts buffers *before* each forward, which then updates them from the rank's
    own slice, so after the last step every rank holds slightly different statistics;
    one broadcast at the end of an epoch makes the evaluated (and saved) model rank 0's.
    SyncBatchNorm would average them instead, but it has no CPU implementation.
    """
    if world.size == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def sum_counts(values: list[float], world: World) -> list[float]:
    """Per-rank counts (images, correct, loss sums) added over all ranks, on every rank."""
    if world.size == 1:
        return values
    # NCCL reduces only CUDA tensors (on this rank's GPU, set by process_device); gloo CPU ones.
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    tensor = torch.tensor(values, dtype=torch.float64, device=on)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather(value: T, world: World) -> list[T]:
    """One small picklable value from every rank, in rank order, on every rank."""
    if world.size == 1:
        return [value]
    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, value)
    return gathered


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state dict (names and exact bytes): equal on two ranks = identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_identical(digests: list[str]) -> None:
    """DDP keeps replicas in lockstep; a rank that drifted would make the checkpoint a lie."""
    if len(set(digests)) != 1:
        raise SlimserveError(f"ranks ended with different weights ({', '.join(d[:12] for d in digests)})")


def launch(nproc: int, entrypoint: Callable[..., T], *args: Any) -> T:
    """Run ``entrypoint(*args)`` in ``nproc`` local processes; rank 0's return value.

    torch's elastic launcher (what ``torchrun`` runs) spawns the workers, rendezvous over
    c10d on a free loopback port, watches them and stops the rest when one fails; no
    restarts, since a training error repeats. A worker's SlimserveError comes back as one.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"slimserve-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",  # port 0: the store binds a free port
        max_restarts=0,
        monitor_interval=0.5,
    )
    # The launcher logs every worker's traceback at ERROR; a SlimserveError is one line for
    # the user, anything else re-raises with the launcher's full report.
    loggers = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.multiprocessing")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL)
    try:
        results = elastic_launch(config, entrypoint)(*args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        message = failure.message["message"] if isinstance(failure.message, dict) else str(failure.message)
        prefix = f"{SlimserveError.__name__}: "
        if not message.startswith(prefix):
            raise
        raise SlimserveError(f"training process {rank}: {message.removeprefix(prefix)}") from None
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
    return results[0]
