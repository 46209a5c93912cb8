import pytest
import torch
from torch import nn

from real20m.config import OptimConfig
from real20m.engine.optim import build_optimizer, build_scheduler
from real20m.models.lr_groups import LRGroup
from real20m.models.qcd import QCDModel
from real20m.utils.checkpoint_io import load_checkpoint, save_checkpoint


class FiveParts(nn.Module):
    """Stands in for QCDModel: its five LR groups, with no caption decoder (an empty group)."""
    LR_GROUPS = QCDModel.LR_GROUPS

    def __init__(self):
        super().__init__()
        self.text, self.vision, self.pooling, self.frame = (nn.Linear(2, 2) for _ in range(4))


def group_lrs(optimizer):
    return {group["name"]: group["lr"] for group in optimizer.param_groups}


def test_one_optimizer_with_the_paper_multipliers():
    optimizer = build_optimizer(FiveParts(), OptimConfig(lr=1e-2, weight_decay=0.05))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert group_lrs(optimizer) == pytest.approx({"text": 1e-4, "vision": 1e-5, "fusion": 1e-2, "frame": 1e-4})
    assert all(group["weight_decay"] == 0.05 for group in optimizer.param_groups)


def test_overridden_multiplier_loss_group_and_other_optimizers():
    scale = nn.Parameter(torch.tensor(3.0))
    cfg = OptimConfig(lr=0.1, optimizer="sgd", lr_mult={"vision": 0.5})
    optimizer = build_optimizer(FiveParts(), cfg, extra_params=[scale])
    assert isinstance(optimizer, torch.optim.SGD)
    assert group_lrs(optimizer) == pytest.approx({"text": 1e-3, "vision": 0.05, "fusion": 0.1, "frame": 1e-3, "loss": 0.1})
    assert isinstance(build_optimizer(FiveParts(), OptimConfig(lr=0.1, optimizer="adam")), torch.optim.Adam)


def test_the_groups_follow_the_models_declaration_in_its_order_with_its_multipliers():
    class TwoParts(nn.Module):
        LR_GROUPS = (LRGroup("head", "head.", 0.5, "the head"), LRGroup("body", "body.", 0.25, "the body"))

        def __init__(self):
            super().__init__()
            self.body, self.head = nn.Linear(2, 3), nn.Linear(3, 1)

    model = TwoParts()
    optimizer = build_optimizer(model, OptimConfig(lr=2.0, optimizer="sgd", lr_mult={"body": 0.125}))
    assert group_lrs(optimizer) == {"head": 1.0, "body": 0.25}
    assert [group["params"] for group in optimizer.param_groups] == [
        [model.head.weight, model.head.bias], [model.body.weight, model.body.bias]]


def test_configuration_mistakes_are_refused():
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(FiveParts(), OptimConfig(lr=0.1, optimizer="lamb"))
    model = FiveParts()
    model.extra = nn.Linear(2, 2)  # trainable but in no group: it would never be updated
    with pytest.raises(ValueError, match="in no parameter group"):
        build_optimizer(model, OptimConfig(lr=0.1))

    class Overlapping(FiveParts):
        LR_GROUPS = (*QCDModel.LR_GROUPS, LRGroup("bias", "text.bias", 1.0, "a bias"))

    with pytest.raises(ValueError, match="in both groups 'text' and 'bias'"):
        build_optimizer(Overlapping(), OptimConfig(lr=0.1))


def lrs_over(cfg, steps, steps_per_epoch=10):
    optimizer = build_optimizer(FiveParts(), cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    fusion = next(group for group in optimizer.param_groups if group["name"] == "fusion")
    history = []
    for _ in range(steps):
        history.append(fusion["lr"])
        optimizer.step()
        scheduler.step()
    return history


def test_step_schedule_decays_every_decay_epochs():
    lrs = lrs_over(OptimConfig(lr=1.0, lr_schedule="step", lr_decay_rate=0.1, decay_epochs=2), steps=45)
    assert lrs[0] == lrs[19] == pytest.approx(1.0)
    assert lrs[20] == lrs[39] == pytest.approx(0.1)
    assert lrs[40] == pytest.approx(0.01)


def test_cosine_schedule_with_linear_warmup():
    lrs = lrs_over(OptimConfig(lr=1.0, lr_schedule="cosine", warmup_steps=4, epochs=2), steps=21)
    assert lrs[0] == pytest.approx(0.25) and lrs[3] == pytest.approx(1.0)
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[12] == pytest.approx(0.5)  # half way through the 16 cosine steps
    assert lrs[20] == pytest.approx(0.0, abs=1e-12)


def test_unknown_schedule_is_refused():
    optimizer = build_optimizer(FiveParts(), OptimConfig(lr=1.0))
    with pytest.raises(ValueError, match="unknown lr_schedule"):
        build_scheduler(optimizer, OptimConfig(lr=1.0, lr_schedule="poly"), steps_per_epoch=10)


def test_scheduler_resumes_exactly_from_a_checkpoint(tmp_path):
    cfg = OptimConfig(lr=1.0, lr_schedule="cosine", warmup_steps=3, epochs=2)
    expected = lrs_over(cfg, steps=20)

    optimizer = build_optimizer(FiveParts(), cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=10)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    save_checkpoint({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp_path / "c.pth.tar")

    state = load_checkpoint(tmp_path / "c.pth.tar")
    optimizer = build_optimizer(FiveParts(), cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=10)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    fusion = next(group for group in optimizer.param_groups if group["name"] == "fusion")
    resumed = []
    for _ in range(13):
        resumed.append(fusion["lr"])
        optimizer.step()
        scheduler.step()
    assert resumed == pytest.approx(expected[7:])
