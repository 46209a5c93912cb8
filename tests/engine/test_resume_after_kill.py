"""Exact resume through the command line: a run killed with SIGKILL, resumed from its newest
checkpoint, ends with the same weights as a run that was never interrupted.

The runs use DataLoader workers, text augmentation, random crops, dropout (caption decoder) and
optionally the cross-batch memory, so every source of randomness has to be restored: the sampler
position, the per-sample seeds, the global RNG states and the XBM buffers.
"""
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from real20m.utils.checkpoint_io import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
MAX_STEPS = 7
SAVE_FREQ = 2
KILL_STEPS = (3, 4)  # after the first checkpoint (step 2), well before the end
RUN_TIMEOUT_S = 120


@pytest.fixture
def data_root(tiny_data_root):
    return tiny_data_root


def train_command(data_root, output_dir, *extra):
    return [sys.executable, str(REPO / "main_cross_domain_emb.py"), "--config", str(REPO / "configs" / "tiny.yaml"),
            "--data_root", data_root, "--output_dir", str(output_dir), "--batch_size", "4", "--workers", "2",
            "--image_size", "32", "--vocab_size", "300", "--max_steps", str(MAX_STEPS),
            "--save_freq", str(SAVE_FREQ), "--print_freq", "1", "--seed", "3", *extra]


def run(command, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env, **kwargs)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def final_weights(output_dir) -> dict:
    return load_checkpoint(Path(output_dir) / "checkpoints" / "last.pth.tar")["model"]


def kill_after_step(command, log_file: Path, step: int) -> int:
    """Start a run and SIGKILL it as soon as its log shows that ``step`` was trained."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                               start_new_session=True)  # its own process group: the loader workers die too
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        # "epoch 0/1 step 4/7 ..." or "... step 4 ...": the step number as a whole word
        while not (log_file.exists() and re.search(rf" step {step}\b", log_file.read_text(encoding="utf-8"))):
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, f"step {step} not reached in time"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return process.returncode


@pytest.mark.parametrize("extra", [[], ["--is_xbm", "--xbm_size", "16"]], ids=["plain", "xbm"])
def test_sigkill_then_resume_equals_an_uninterrupted_run_bitwise(data_root, tmp_path, extra):
    reference = tmp_path / "reference"
    run(train_command(data_root, reference, *extra))

    interrupted = tmp_path / "interrupted"
    kill_step = random.choice(KILL_STEPS)
    returncode = kill_after_step(train_command(data_root, interrupted, *extra), interrupted / "log.txt", kill_step)
    assert returncode == -signal.SIGKILL
    latest = interrupted / "checkpoints" / "last.pth.tar"
    assert SAVE_FREQ <= load_checkpoint(latest)["global_step"] <= kill_step < MAX_STEPS

    run(train_command(data_root, interrupted, *extra, "--resume", str(latest)))
    assert f"resumed from {latest}" in (interrupted / "log.txt").read_text(encoding="utf-8")
    expected, resumed = final_weights(reference), final_weights(interrupted)
    assert load_checkpoint(latest)["global_step"] == MAX_STEPS
    assert expected.keys() == resumed.keys()
    for name, value in expected.items():
        assert torch.equal(value, resumed[name]), name
    expected_criterion = load_checkpoint(reference / "checkpoints" / "last.pth.tar")["criterion"]
    resumed_criterion = load_checkpoint(latest)["criterion"]
    if extra:  # the memory (size 16) is full after 7 steps of 4 items, so its contents matter
        assert int(resumed_criterion["memory.filled"]) == 16
        assert resumed_criterion["memory.items"].abs().sum() > 0
    for name, value in expected_criterion.items():
        assert torch.equal(value, resumed_criterion[name]), name


def test_two_gloo_ranks_resume_mid_run_within_1e6(data_root, tmp_path):
    """torchrun with 2 CPU processes: resuming from a mid-run checkpoint reproduces the final weights."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

    def command(output_dir, *extra):
        single = train_command(data_root, output_dir, "--batch_size", "2", "--workers", "0",
                               "--keep_checkpoints", "0", *extra)
        return launcher + single[1:]

    full = tmp_path / "full"
    run(command(full), cwd=tmp_path)
    middle = full / "checkpoints" / "last.pth.tar"
    numbered = sorted((full / "checkpoints").glob(f"checkpoint_*_{SAVE_FREQ}.pth.tar"))
    assert len(numbered) == 1 and load_checkpoint(numbered[0])["world_size"] == 2
    resumed = tmp_path / "resumed"
    run(command(resumed, "--resume", str(numbered[0])), cwd=tmp_path)

    expected, actual = final_weights(full), final_weights(resumed)
    assert load_checkpoint(middle)["global_step"] == MAX_STEPS
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=0, atol=1e-6, msg=name)
