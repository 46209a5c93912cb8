"""One optimizer with a parameter group per model part, and per-iteration LR schedules.

The paper fine-tunes the pretrained towers much more gently than the new fusion layers, hence a
learning-rate multiplier per group (LR = optim.lr * multiplier). The model declares its groups
(``LR_GROUPS``, see ``real20m.models.lr_groups``) with their default multipliers; optim.lr_mult
overrides them. Schedules are LambdaLR factors on top of those LRs, so scheduler.state_dict() /
load_state_dict() resume them exactly.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable

import torch
from torch import nn

from real20m.models.lr_groups import default_multipliers, grouped_parameters

if TYPE_CHECKING:
    from real20m.config import OptimConfig

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("step", "cosine")


def _check_groups_cover_model(model: nn.Module, groups: dict[str, list[nn.Parameter]]) -> None:
    """Every trainable parameter must be in exactly one group, or it would silently never train."""
    owner: dict[int, str] = {}
    for name, params in groups.items():
        for param in params:
            if id(param) in owner:
                raise ValueError(f"a parameter is in both groups {owner[id(param)]!r} and {name!r}")
            owner[id(param)] = name
    missing = [name for name, param in model.named_parameters() if param.requires_grad and id(param) not in owner]
    if missing:
        raise ValueError(f"trainable parameters in no parameter group: {missing[:5]} ({len(missing)} in all)")


def build_param_groups(model: nn.Module, optim: OptimConfig,
                       extra_params: Iterable[nn.Parameter] = ()) -> list[dict]:
    model = getattr(model, "module", model)  # accept a DDP-wrapped model
    groups = grouped_parameters(model.named_parameters(), model.LR_GROUPS)
    _check_groups_cover_model(model, groups)
    multipliers = {**default_multipliers(model.LR_GROUPS), **optim.lr_mult}
    param_groups = []
    for name, params in groups.items():
        trainable = [param for param in params if param.requires_grad]
        if trainable:
            param_groups.append({"name": name, "params": trainable, "lr": optim.lr * multipliers[name]})
    extra = [param for param in extra_params if param.requires_grad]
    if extra:
        param_groups.append({"name": "loss", "params": extra, "lr": optim.lr})
    return param_groups


def build_optimizer(model: nn.Module, optim: OptimConfig,
                    extra_params: Iterable[nn.Parameter] = ()) -> torch.optim.Optimizer:
    """optim.lr, optim.optimizer (adamw|adam|sgd), optim.weight_decay, optim.momentum (sgd), optim.lr_mult."""
    param_groups = build_param_groups(model, optim, extra_params)
    if optim.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=optim.lr, weight_decay=optim.weight_decay)
    if optim.optimizer == "adam":
        return torch.optim.Adam(param_groups, lr=optim.lr, weight_decay=optim.weight_decay)
    if optim.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    raise ValueError(f"unknown optimizer {optim.optimizer!r}; choose one of {OPTIMIZERS}")


class StepDecay:
    """Multiply by `rate` every `steps_per_decay` iterations (the paper's epoch-wise step decay)."""

    def __init__(self, rate: float, steps_per_decay: int):
        self.rate = rate
        self.steps_per_decay = steps_per_decay

    def __call__(self, step: int) -> float:
        return self.rate ** (step // self.steps_per_decay)


class WarmupCosine:
    """Linear warm-up to 1 over `warmup_steps`, then cosine from 1 to 0 at `total_steps`."""

    def __init__(self, warmup_steps: int, total_steps: int):
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Call scheduler.step() once per iteration.

    "step": factor = optim.lr_decay_rate ** (step // (optim.decay_epochs * steps_per_epoch));
    "cosine": optim.warmup_steps of linear warm-up, then cosine to 0 at optim.epochs * steps_per_epoch.
    """
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    if optim.lr_schedule == "step":
        if optim.decay_epochs <= 0:
            raise ValueError(f"decay_epochs must be positive, got {optim.decay_epochs}")
        factor = StepDecay(optim.lr_decay_rate, optim.decay_epochs * steps_per_epoch)
    elif optim.lr_schedule == "cosine":
        factor = WarmupCosine(optim.warmup_steps, optim.epochs * steps_per_epoch)
    else:
        raise ValueError(f"unknown lr_schedule {optim.lr_schedule!r}; choose one of {SCHEDULES}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)
