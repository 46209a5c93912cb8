"""The training loop on a tiny synthetic dataset: it learns, it checkpoints, it resumes exactly."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from real20m.config import DataConfig, parse_config
from real20m.utils.checkpoint_io import load_checkpoint
from real20m.engine.trainer import Trainer
from real20m.factory import build_train_loader
from real20m.utils.distributed import DistEnv

REPO = Path(__file__).resolve().parents[2]
SINGLE_CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True, backend=None)


@pytest.fixture
def data_root(tiny_data_root):
    return tiny_data_root


def tiny_argv(data_root, output_dir, *extra):
    return ["--config", str(REPO / "configs" / "tiny.yaml"), "--data_root", data_root, "--output_dir",
            str(output_dir), "--batch_size", "4", "--workers", "0", "--image_size", "32", "--vocab_size", "300",
            "--print_freq", "2", *extra]


def tiny_cfg(data_root, output_dir, *extra):
    return parse_config(tiny_argv(data_root, output_dir, *extra))


def recorded_losses(trainer):
    losses = []
    step = trainer.train_step

    def recording_step(batch):
        terms = step(batch)
        losses.append(terms["total"])
        return terms
    trainer.train_step = recording_step
    return losses


def test_training_lowers_the_loss_and_writes_checkpoints(data_root, tmp_path):
    trainer = Trainer(tiny_cfg(data_root, tmp_path, "--epochs", "6", "--lr", "0.002", "--save_epoch_freq", "1"),
                      SINGLE_CPU)
    losses = recorded_losses(trainer)
    trainer.fit()

    per_epoch = len(losses) // 6
    assert sum(losses[-per_epoch:]) / per_epoch < sum(losses[:per_epoch]) / per_epoch - 0.5
    checkpoints = sorted(os.listdir(tmp_path / "checkpoints"))
    # tiny.yaml keeps the newest 3 numbered checkpoints, those of epochs 4, 5 and 6.
    assert [name.split("_")[1] for name in checkpoints[:-1]] == ["4", "5", "6"], checkpoints
    assert checkpoints[-1] == "last.pth.tar"
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pth.tar")
    assert last["epoch"] == 6 and last["global_step"] == len(losses) and last["batch_in_epoch"] == 0
    assert torch.equal(last["model"]["pooling.projection.weight"], trainer.model.state_dict()["pooling.projection.weight"])
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tensorboard"))


def test_resume_continues_at_the_same_step_lr_sampler_position_and_rng(data_root, tmp_path):
    full = Trainer(tiny_cfg(data_root, tmp_path / "full", "--epochs", "2", "--save_freq", "3",
                            "--keep_checkpoints", "0"), SINGLE_CPU)
    full_losses = recorded_losses(full)
    full.fit()
    middle = tmp_path / "full" / "checkpoints" / "checkpoint_0_3.pth.tar"
    assert middle.exists()

    resumed = Trainer(tiny_cfg(data_root, tmp_path / "resumed", "--epochs", "2", "--resume", str(middle)), SINGLE_CPU)
    assert (resumed.epoch, resumed.batch_in_epoch, resumed.global_step) == (0, 3, 3)
    assert resumed.scheduler.last_epoch == 3
    resumed_losses = recorded_losses(resumed)
    resumed.fit()

    assert resumed_losses == full_losses[3:]
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [g["lr"] for g in full.optimizer.param_groups]


def test_torchrun_with_two_gloo_processes_trains_and_saves(data_root, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "main_cross_domain_emb.py"), "--config", str(REPO / "configs" / "tiny.yaml"),
               "--data_root", data_root, "--output_dir", str(tmp_path), "--batch_size", "2", "--workers", "0",
               "--image_size", "32", "--vocab_size", "300", "--max_steps", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pth.tar")
    assert last["global_step"] == 3 and last["world_size"] == 2


def test_a_caption_weight_of_zero_builds_no_caption_decoder(data_root, tmp_path):
    cfg = tiny_cfg(data_root, tmp_path, "--max_steps", "1", "--loss.weights.caption", "0")
    trainer = Trainer(cfg, SINGLE_CPU)
    assert trainer.model.caption is None and trainer.cfg.model.caption is None
    trainer.fit()
    assert not any(name.startswith("caption") for name in load_checkpoint(tmp_path / "checkpoints" / "last.pth.tar")["model"])


class WorkerNiceness(torch.utils.data.Dataset):
    """Each item is the niceness of the process that loads it."""

    def __len__(self):
        return 2

    def __getitem__(self, index):
        return os.nice(0)


@pytest.mark.skipif(not hasattr(os, "nice"), reason="process niceness is POSIX")
def test_loader_workers_run_at_the_lowest_cpu_priority():
    own = os.nice(0)
    loader = build_train_loader(DataConfig(workers=1), WorkerNiceness(), [[0, 1]], lambda niceness: niceness,
                                SINGLE_CPU, seed=0)
    assert [niceness for batch in loader for niceness in batch] == [19, 19]
    assert os.nice(0) == own  # the training process keeps its priority


def test_the_log_states_the_runs_length_and_each_progress_line_its_totals(data_root, tmp_path, caplog):
    real20m_logger = logging.getLogger("real20m")
    real20m_logger.addHandler(caplog.handler)   # the package logger may not propagate (setup_logging)
    caplog.set_level(logging.INFO, logger="real20m")
    try:
        trainer = Trainer(tiny_cfg(data_root, tmp_path, "--epochs", "3", "--max_steps", "4"), SINGLE_CPU)
        per_epoch = len(trainer.sampler)
        trainer.fit()
    finally:
        real20m_logger.removeHandler(caplog.handler)
    assert f"about 4 steps (3 epochs of about {per_epoch} batches of 4 per process)" in caplog.text
    assert "epoch 0/3 step 2/4  " in caplog.text
