"""Process-group set-up from the torchrun environment.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (plus MASTER_ADDR/MASTER_PORT). Without them the
program runs as one process. NCCL is used when CUDA is available, gloo on CPU-only machines.
"""
import datetime
import os

import torch
import torch.distributed as dist

from real20m.utils.distributed import DistEnv, in_process_group


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
    if in_process_group():
        dist.destroy_process_group()
