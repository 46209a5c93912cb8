"""Hung ranks: a rank that stops making progress is named with its phase and last step within
--hang_timeout, every rank exits non-zero, the newest checkpoint stays loadable, and under
torchrun --max-restarts the job then restarts and finishes."""
import os
import subprocess
import sys
import time

import pytest

from real20m.engine.watchdog import HANG_EXIT_STATUS, Heartbeat
from real20m.utils.checkpoint_io import load_checkpoint
from tests.engine.test_resume_after_kill import MAX_STEPS, SAVE_FREQ, train_command

HANG_TIMEOUT_S = 6
STALL_STEP = SAVE_FREQ + 1


def torchrun_with_stall(data_root, output_dir, max_restarts):
    single = train_command(data_root, output_dir, "--batch_size", "2", "--workers", "0", "--resume", "latest",
                           "--hang_timeout", str(HANG_TIMEOUT_S))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--max-restarts", str(max_restarts), *single[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "REAL20M_FAULT": f"stall:1:{STALL_STEP}"}
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=output_dir.parent)
    return result, time.monotonic() - started


def test_a_stalled_rank_is_named_and_every_rank_exits_non_zero(tiny_data_root, tmp_path):
    result, _ = torchrun_with_stall(tiny_data_root, tmp_path / "run", max_restarts=0)
    assert result.returncode != 0
    assert (f"rank 1 hung: no progress in phase data for {HANG_TIMEOUT_S} s after step {STALL_STEP} "
            f"(--hang_timeout {HANG_TIMEOUT_S}); exiting with status {HANG_EXIT_STATUS}") in result.stderr
    assert "rank 0 hung" not in (tmp_path / "run" / "log.txt").read_text()  # rank 0 only waited for rank 1
    assert "Traceback" not in result.stderr.split("rank 1 hung")[0]
    latest = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pth.tar")
    assert latest["global_step"] == SAVE_FREQ


def test_with_restarts_a_stalled_job_restarts_and_finishes(tiny_data_root, tmp_path):
    result, seconds = torchrun_with_stall(tiny_data_root, tmp_path / "run", max_restarts=1)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 1 hung" in result.stderr and "elastic restart 1" in (tmp_path / "run" / "log.txt").read_text()
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pth.tar")["global_step"] == MAX_STEPS
    assert seconds < 200


@pytest.mark.parametrize("phase, allowed", [("data", 10), ("save", 10), ("collective", 15), ("backward", 15)])
def test_the_heartbeat_is_silent_from_its_last_mark_but_not_while_validating(phase, allowed):
    heartbeat = Heartbeat()
    heartbeat.enter(phase)
    heartbeat.last_beat -= 100
    assert heartbeat.silent_for() >= 100 and heartbeat.allowed_silence(10) == allowed
    heartbeat.enter("validate")
    heartbeat.last_beat -= 100
    assert heartbeat.silent_for() == 0.0
