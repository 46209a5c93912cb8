"""Test helper: run a function in N CPU processes joined by a gloo process group.

The workers go through real20m.engine.distributed.init_distributed with the same environment
variables torchrun sets, so the tests exercise the production set-up path.
"""
import os
import socket

import torch
import torch.multiprocessing as mp

from real20m.engine.distributed import cleanup_distributed, init_distributed

TIMEOUT_S = 60  # a crashed peer fails the test after this long instead of hanging it


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn, args: tuple) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        CUDA_VISIBLE_DEVICES="",  # the tests compare against CPU references, also on GPU machines
    )
    torch.set_num_threads(1)
    env = init_distributed(timeout_s=TIMEOUT_S)
    try:
        fn(env, *args)
    finally:
        cleanup_distributed()


def run_in_processes(fn, world_size: int, *args) -> None:
    """Call fn(dist_env, *args) on every rank; fn must be a module-level (picklable) function."""
    mp.spawn(_worker, args=(world_size, free_port(), fn, args), nprocs=world_size, join=True)
