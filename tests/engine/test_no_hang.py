"""A failure on one rank ends the whole job in bounded time, with its cause printed once.

The failures are real ones, not injected into production code: a checkpoint folder that cannot be
created (rank 0 fails while saving, rank 1 waits in the barrier after the save), a malformed
train file (both ranks fail while parsing), and a peer that stops taking part in collectives
(the ``--dist_timeout`` bound, through the same init_distributed the entry point uses).
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as torch_dist

from real20m.engine.distributed import init_distributed
from tests.utils.process_group import free_port

REPO = Path(__file__).resolve().parents[2]
DIST_TIMEOUT_S = 20
BOUND_S = 60  # process start, data, tokenizer and model on 2 busy cores, plus the collective timeout


@pytest.fixture
def data_root(tiny_data_root):
    return tiny_data_root


def torchrun_train(data_root, output_dir, *extra):
    """Run a 2-process CPU training job; returns (result, seconds)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "main_cross_domain_emb.py"), "--config", str(REPO / "configs" / "tiny.yaml"),
               "--data_root", data_root, "--output_dir", str(output_dir), "--batch_size", "2", "--workers", "0",
               "--image_size", "32", "--vocab_size", "300", "--max_steps", "4",
               "--dist_timeout", str(DIST_TIMEOUT_S), *extra]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=3 * BOUND_S, cwd=output_dir.parent,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    return result, time.monotonic() - started


def test_rank0_failing_to_save_ends_both_ranks(data_root, tmp_path):
    not_a_folder = tmp_path / "checkpoints"
    not_a_folder.write_text("a file where the checkpoint folder should be")
    result, seconds = torchrun_train(data_root, tmp_path / "out", "--save_freq", "1",
                                     "--checkpoints", str(not_a_folder))
    assert result.returncode != 0
    assert seconds < BOUND_S, f"took {seconds:.0f} s"
    cause = f"[rank 0] error: {not_a_folder}: cannot create the checkpoint folder (File exists)"
    assert result.stderr.count(cause) == 1, result.stderr[-3000:]
    assert "exitcode  : 2" in result.stderr  # torchrun's summary: the input-error status of rank 0


def test_malformed_train_file_ends_both_ranks_at_parse(data_root, tmp_path):
    train_file = tmp_path / "train.txt"
    train_file.write_text("red dress\t50000\t1000000\nbroken line without tabs\n", encoding="utf-8")
    (tmp_path / "out").mkdir()
    result, seconds = torchrun_train(data_root, tmp_path / "out", "--train_file", str(train_file))
    assert result.returncode != 0 and seconds < BOUND_S
    message = f"error: {train_file}:2: expected 3 tab-separated fields, got 1"
    # Each rank prints it, unless torchrun stops the other rank first, after the first one exited.
    printed = [line for line in result.stderr.splitlines() if message in line]
    assert 1 <= len(printed) <= 2 and all(line.startswith("[rank ") for line in printed), result.stderr[-3000:]
    assert "[rank0]: Traceback" not in result.stderr and "[rank1]: Traceback" not in result.stderr


def _stuck_peer_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
    init_distributed(timeout_s=5)
    done = Path(out_dir) / "rank0_done"
    if rank == 1:  # alive but never joins the barrier (e.g. stuck on a slow file system)
        while not done.exists():
            time.sleep(0.1)
        return
    started = time.monotonic()
    try:
        torch_dist.barrier()
        outcome = "returned"
    except Exception as error:  # gloo reports the timeout as a RuntimeError / DistError
        outcome = f"{type(error).__name__}: {str(error)[:200]}"
    (Path(out_dir) / "rank0.txt").write_text(f"{time.monotonic() - started:.1f}\n{outcome}")
    done.touch()


def test_a_stuck_peer_fails_the_collective_after_the_timeout(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_stuck_peer_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    seconds, outcome = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    assert outcome != "returned"
    assert 4.0 <= float(seconds) < 15.0, outcome
