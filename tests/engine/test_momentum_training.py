"""Training with a momentum encoder (the albef_itc term, as the comparison grid runs it): the copy is
saved, a resumed run continues bitwise, and the checkpoint evaluates; a run without such a term
has no copy at all."""
import os

import pytest
import torch

from real20m.cli.train import run
from real20m.datasets import load_items
from real20m.engine.trainer import Trainer
from real20m.utils.checkpoint_io import load_checkpoint
from tests.engine.test_inference import checkpoint_eval_argv
from tests.engine.test_trainer import SINGLE_CPU, recorded_losses, tiny_cfg

ALBEF_TERMS = ("--loss.weights.fused", "0", "--loss.weights.albef_itc", "1", "--loss.is_xbm", "true")
ALBEF = (*ALBEF_TERMS, "--epochs", "2", "--max_steps", "5")
COPY = "momentum_encoder."


@pytest.fixture(scope="module")
def albef_run(tiny_data_root, tmp_path_factory):
    """An uninterrupted 5-step run that keeps its checkpoint of step 3, and its losses."""
    output = tmp_path_factory.mktemp("albef_full")
    trainer = Trainer(tiny_cfg(tiny_data_root, output, *ALBEF, "--save_freq", "3", "--keep_checkpoints", "0"),
                      SINGLE_CPU)
    losses = recorded_losses(trainer)
    trainer.fit()
    return trainer, losses, output / "checkpoints"


def test_a_run_without_a_momentum_term_has_no_momentum_copy(tiny_data_root, tmp_path):
    Trainer(tiny_cfg(tiny_data_root, tmp_path, "--max_steps", "1"), SINGLE_CPU).fit()
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "last.pth.tar")
    assert not [name for name in checkpoint["model"] if "momentum" in name]
    assert "momentum" not in checkpoint["model_cfg"]


def test_the_copy_is_saved_averaged_and_a_resumed_run_continues_bitwise(albef_run, tiny_data_root, tmp_path):
    full, full_losses, checkpoints = albef_run
    state = full.model.state_dict()
    copied = [name for name in state if name.startswith(COPY)]
    assert copied and all(name in load_checkpoint(checkpoints / "last.pth.tar")["model"] for name in copied)
    # The EMA moved the copy, but only part of the way to the trained weights.
    online = "pooling.projection.weight"
    assert not torch.equal(state[COPY + "model." + online], state[online])

    middle = checkpoints / "checkpoint_0_3.pth.tar"
    resumed = Trainer(tiny_cfg(tiny_data_root, tmp_path, *ALBEF, "--resume", str(middle)), SINGLE_CPU)
    assert resumed.global_step == 3
    resumed_losses = recorded_losses(resumed)
    resumed.fit()
    assert resumed_losses == full_losses[3:]
    for name, value in state.items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    for name, value in full.criterion.state_dict().items():   # the queue of momentum features
        assert torch.equal(value, resumed.criterion.state_dict()[name]), name


def test_a_checkpoint_with_a_momentum_copy_evaluates(albef_run, tiny_data_root, tmp_path):
    _, _, checkpoints = albef_run
    count = run(checkpoint_eval_argv(tiny_data_root, tmp_path, "--resume", str(checkpoints / "last.pth.tar")))
    assert count == len(load_items(os.path.join(tiny_data_root, "test_file", "goods_gallery.txt")).pids)


def test_with_gradient_accumulation_the_copy_moves_once_per_optimizer_step(tiny_data_root, tmp_path):
    trainer = Trainer(tiny_cfg(tiny_data_root, tmp_path, *ALBEF_TERMS, "--max_steps", "1", "--accum_freq", "2",
                               "--model.momentum", "0.9"), SINGLE_CPU)
    online = "pooling.projection.weight"
    start = trainer.model.state_dict()[online].clone()
    trainer.fit()
    state = trainer.model.state_dict()
    torch.testing.assert_close(state[COPY + "model." + online], 0.9 * start + 0.1 * state[online])
