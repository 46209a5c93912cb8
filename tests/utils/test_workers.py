import os

import pytest
import torch

from real20m.utils.workers import lower_worker_priority, worker_init_for


def test_cpu_runs_lower_worker_priority_and_gpu_runs_do_not():
    assert worker_init_for(torch.device("cpu")) is lower_worker_priority
    assert worker_init_for(torch.device("cuda", 0)) is None


@pytest.mark.skipif(not hasattr(os, "nice"), reason="process niceness is POSIX")
def test_lowering_the_priority_reaches_niceness_19():
    read, write = os.pipe()
    child = os.fork()
    if child == 0:   # in a child, so this test process keeps its own priority
        lower_worker_priority(0)
        os.write(write, str(os.nice(0)).encode())
        os._exit(0)
    os.waitpid(child, 0)
    assert int(os.read(read, 16)) == 19
