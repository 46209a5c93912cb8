"""Scheduling of DataLoader worker processes."""
import os

import torch


def lower_worker_priority(worker_id: int) -> None:
    """``worker_init_fn``: run the worker at the lowest CPU priority (niceness 19).

    When workers and the model share the same cores (a CPU run), a worker that preempts one of the
    model's OpenMP threads stalls the others at the next barrier, which costs the step more than
    the worker's own CPU time. At the lowest priority the workers take the cycles the step leaves,
    and all of them while the step waits for a batch. Scheduling only: what a worker produces is
    unaffected."""
    if hasattr(os, "nice"):  # POSIX
        os.nice(19)  # raising one's own niceness needs no privilege; the kernel caps it at 19


def worker_init_for(device: torch.device):
    """The ``worker_init_fn`` for a model on ``device``: lowered priority on CPU, none on a GPU,
    where the model runs elsewhere and a crowded node must not starve the workers that feed it."""
    return lower_worker_priority if device.type == "cpu" else None
