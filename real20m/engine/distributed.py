"""Process-group set-up from the torchrun environment, and small collective helpers.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (plus MASTER_ADDR/MASTER_PORT). Without them the
program runs as one process. NCCL is used when CUDA is available, gloo on CPU-only machines.
"""
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_main: bool
    backend: str | None  # None when running as a single process without a process group


def _launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(timeout_s: int = 1800) -> DistEnv:
    """Join the process group described by the environment, or describe a single process.

    `timeout_s` bounds every collective, so a dead peer ends the job with an error instead of a hang.
    """
    if not _launched_by_torchrun():
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        return DistEnv(rank=0, world_size=1, local_rank=0, device=device, is_main=True, backend=None)

    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        backend, device = "nccl", torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # before init, so NCCL binds this rank to its own GPU
    else:
        backend, device = "gloo", torch.device("cpu")
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend=backend, store=_attempt_store(rank, world_size, timeout), rank=rank,
                            world_size=world_size, timeout=timeout)
    return DistEnv(rank, world_size, local_rank, device, is_main=rank == 0, backend=backend)


def restart_count() -> int:
    """Which restart of an elastic job (torchrun --max-restarts) this process belongs to (0: the first)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))


def _attempt_store(rank: int, world_size: int, timeout: datetime.timedelta) -> dist.Store:
    """The env:// store, its keys prefixed by the restart count: torchrun's store outlives a restart
    and still holds the killed attempt's addresses, which a restarted rank would otherwise read
    before its peers overwrite them (gloo then fails with "connection refused")."""
    store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=timeout))
    return dist.PrefixStore(f"attempt_{restart_count()}", store)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def _collective_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo only CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank; a single process has nobody to wait for."""
    if _is_initialized():
        torch.distributed.barrier()


def all_reduce_mean(value: float) -> float:
    """Mean of a Python number over all ranks (the value itself when not distributed)."""
    if not _is_initialized():
        return float(value)
    tensor = torch.tensor(float(value), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return tensor.item() / dist.get_world_size()


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average .grad over ranks for parameters outside DDP (e.g. a learnable logit scale)."""
    if not _is_initialized() or dist.get_world_size() == 1:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= dist.get_world_size()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s picklable object, on every rank."""
    if not _is_initialized():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]
