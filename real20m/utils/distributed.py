"""What a process needs to know about the job's other processes, and the two collectives the
library uses (wait for everyone; share one rank's value).

Setting the process group up from the torchrun environment is the job's business
(``real20m.engine.distributed``); feature extraction and the factory only describe and
synchronise ranks, so this sits below both. Without a process group every helper acts as the
single process it is.
"""
from dataclasses import dataclass
from typing import Any

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


def in_process_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank; a single process has nobody to wait for."""
    if in_process_group():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s picklable object, on every rank."""
    if not in_process_group():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]
