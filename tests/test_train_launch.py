"""How train.sh launches: the same configuration with or without GPUs, and on one node no more
processes than the training data gives a batch each. No GPU is needed: the GPU count comes from a
stand-in interpreter, and the world sizes are checked with samplers built for fake ranks."""
import importlib
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import real20m
from real20m.cli.processes import batches_per_process, plan, supported_processes
from real20m.config import parse_config
from real20m.datasets import SourceBatchSampler, build_train_dataset

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")

# Stands in for the interpreter train.sh runs: reports $FAKE_GPUS GPUs to the probe, records the
# launch command (the trainer itself or torchrun) instead of running it, and runs every other
# module (the synthetic dataset, the process-count check) with the real interpreter.
STUB_PYTHON = """#!/bin/sh
case "$1 $2" in
    "-c "*device_count*) echo "$FAKE_GPUS"; exit 0 ;;
    "-m torch.distributed.run") ;;
    "-m "*) exec "$REAL_PYTHON" "$@" ;;
esac
printf '%s\\n' "$@" > "$LAUNCH_RECORD"
"""


def tiny_config(data_root, *flags):
    return parse_config(["--config", "tiny", "--data_root", data_root, "--batch_size", "4", *flags])


def launch_train_sh(tmp_path, data_root, gpus, *args, nproc=None):
    """(recorded launch argv, completed process) of ``sh train.sh args`` on a node with ``gpus`` GPUs."""
    stub = tmp_path / "python"
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    record = tmp_path / "launch.txt"
    env = {**os.environ, "PYTHON": str(stub), "REAL_PYTHON": sys.executable, "FAKE_GPUS": str(gpus),
           "LAUNCH_RECORD": str(record), "DATA_ROOT": data_root, "OUTPUT_DIR": str(tmp_path / "out"),
           "OMP_NUM_THREADS": "1"}
    env.pop("CONFIG", None)
    env.pop("NPROC_PER_NODE", None)
    env.pop("NNODES", None)
    if nproc is not None:
        env["NPROC_PER_NODE"] = str(nproc)
    result = subprocess.run(["sh", str(REPO / "train.sh"), *args], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return record.read_text().splitlines(), result


def flag_value(argv, flag):
    return argv[argv.index(flag) + 1]


def test_supported_processes_is_the_largest_world_size_that_gives_every_rank_a_batch(tiny_data_root):
    cfg = tiny_config(tiny_data_root)
    count, tried = supported_processes(cfg, 8)
    assert 1 < count < 8, tried  # the fixture's 16 queries in batches of 4 fill a few ranks, not 8
    assert tried[count] > 0 and tried[count + 1] == 0
    # With that many fake ranks every rank really draws non-empty, disjoint batches in epoch 0.
    dataset = build_train_dataset(cfg.data)
    per_rank = [list(SourceBatchSampler(dataset, 4, rank, count, cfg.seed)) for rank in range(count)]
    assert all(len(batches) == tried[count] for batches in per_rank)
    rows = [key.row for batches in per_rank for batch in batches for key in batch]
    assert len(rows) == len(set(rows)) == count * tried[count] * 4
    assert batches_per_process(cfg, dataset, 1) >= count * tried[count]


def test_gradient_accumulation_counts_the_samples_of_a_whole_optimizer_step(tiny_data_root):
    # The trainer's sampler cuts batches of accum_freq x batch_size samples.
    flags = ["--config", "tiny", "--data_root", tiny_data_root]
    accumulated, _ = supported_processes(parse_config([*flags, "--batch_size", "2", "--accum_freq", "2"]), 8)
    whole, _ = supported_processes(parse_config([*flags, "--batch_size", "4"]), 8)
    small, _ = supported_processes(parse_config([*flags, "--batch_size", "2"]), 8)
    assert accumulated == whole < small


def test_no_batch_even_for_one_process_is_left_to_the_trainer_to_report(tiny_data_root, capsys):
    # 16 samples cannot fill a batch of 32 per source: one process, whose "too few samples" error names it.
    assert plan(8, ["--config", "tiny", "--data_root", tiny_data_root]) == 1
    assert capsys.readouterr().err == ""


def test_print_config_is_one_process_and_reads_no_data(tmp_path):
    assert plan(8, ["--config", "tiny", "--data_root", str(tmp_path / "missing"), "--print_config"]) == 1


def test_without_gpus_train_sh_runs_the_tiny_config_in_one_process(tiny_data_root, tmp_path):
    argv, _ = launch_train_sh(tmp_path, tiny_data_root, 0, "--batch_size", "4")
    assert argv[0] == str(REPO / "main_cross_domain_emb.py")
    assert flag_value(argv, "--config") == TINY
    assert flag_value(argv, "--resume") == "latest"  # a rerun continues the run in OUTPUT_DIR


def test_with_eight_gpus_train_sh_runs_the_same_config_on_as_many_gpus_as_the_data_fills(tiny_data_root, tmp_path):
    argv, result = launch_train_sh(tmp_path, tiny_data_root, 8, "--batch_size", "4")
    expected, _ = supported_processes(tiny_config(tiny_data_root), 8)
    assert argv[:4] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    assert int(argv[4]) == expected
    assert argv[5:8] == ["--max-restarts", "3", str(REPO / "main_cross_domain_emb.py")]
    assert flag_value(argv, "--config") == TINY and flag_value(argv, "--batch_size") == "4"
    assert f"launching {expected} of 8 processes" in result.stderr


def test_a_process_count_set_by_hand_is_kept(tiny_data_root, tmp_path):
    argv, result = launch_train_sh(tmp_path, tiny_data_root, 8, "--batch_size", "4", nproc=8)
    assert flag_value(argv, "--nproc_per_node") == "8" and flag_value(argv, "--config") == TINY
    assert "launching" not in result.stderr


def test_max_restarts_makes_even_one_process_restartable_and_the_last_resume_flag_wins(tiny_data_root, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.setenv("MAX_RESTARTS", "2")
    checkpoint = str(tmp_path / "some.pth.tar")
    argv, _ = launch_train_sh(tmp_path, tiny_data_root, 0, "--batch_size", "4", "--resume", checkpoint)
    assert argv[:2] == ["-m", "torch.distributed.run"] and flag_value(argv, "--max-restarts") == "2"
    assert argv[argv.index("--resume", argv.index("--resume") + 1) + 1] == checkpoint


def test_version_comes_from_the_installed_metadata(monkeypatch):
    assert real20m.__version__ == metadata.version("real20m")

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    try:
        assert importlib.reload(real20m).__version__ == "0+unknown"
    finally:
        monkeypatch.undo()
        importlib.reload(real20m)
    assert real20m.__version__ == metadata.version("real20m")
