"""Elastic restart: under torchrun --max-restarts, a rank SIGKILLed mid-epoch brings every rank
back from the newest checkpoint (--resume latest), and the run ends with the weights of a run that
was never interrupted."""
import os
import subprocess
import sys

import torch

from real20m.utils.checkpoint_io import load_checkpoint
from tests.engine.test_resume_after_kill import MAX_STEPS, SAVE_FREQ, final_weights, train_command

KILL_STEP = SAVE_FREQ + 1  # after the first checkpoint, before the second


def torchrun(data_root, output_dir, max_restarts, fault=None):
    single = train_command(data_root, output_dir, "--batch_size", "2", "--workers", "0", "--resume", "latest")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--max-restarts", str(max_restarts), *single[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("REAL20M_FAULT", None)
    if fault:
        env["REAL20M_FAULT"] = fault
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=output_dir.parent)


def test_a_killed_rank_restarts_the_job_which_ends_as_an_uninterrupted_run(tiny_data_root, tmp_path):
    reference, restarted = tmp_path / "reference", tmp_path / "restarted"
    assert torchrun(tiny_data_root, reference, 0).returncode == 0

    without_restarts = torchrun(tiny_data_root, tmp_path / "no_restart", 0, fault=f"kill:1:{KILL_STEP}")
    assert without_restarts.returncode != 0  # the hook really kills a rank

    result = torchrun(tiny_data_root, restarted, 1, fault=f"kill:1:{KILL_STEP}")
    assert result.returncode == 0, result.stderr[-3000:]
    log = (restarted / "log.txt").read_text(encoding="utf-8")
    checkpoint = restarted / "checkpoints" / "last.pth.tar"
    assert f"elastic restart 1 of at most 1: resuming from {checkpoint}" in log
    assert f"resumed from {checkpoint} at epoch 0, batch {SAVE_FREQ}, step {SAVE_FREQ}" in log
    assert load_checkpoint(checkpoint)["global_step"] == MAX_STEPS
    expected, actual = final_weights(reference), final_weights(restarted)
    assert expected.keys() == actual.keys()
    for name, value in expected.items():
        assert torch.equal(value, actual[name]), name
