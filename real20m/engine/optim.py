"""One optimizer with a parameter group per model part, and per-iteration LR schedules.

The paper fine-tunes the pretrained towers much more gently than the new fusion layers, hence a
learning-rate multiplier per group (LR = cfg.lr * multiplier). Schedules are LambdaLR factors on
top of those LRs, so scheduler.state_dict() / load_state_dict() resume them exactly.
"""
import math
from argparse import Namespace
from typing import Iterable

import torch
from torch import nn

# Paper defaults: pretrained towers 1e-2 / 1e-3 of the base LR, new fusion layers the full LR.
DEFAULT_LR_MULT = {"text": 1e-2, "vision": 1e-3, "fusion": 1.0, "frame": 1e-2, "caption": 1e-3}
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("step", "cosine")


def lr_multipliers(cfg: Namespace) -> dict[str, float]:
    overrides = getattr(cfg, "lr_mult", None) or {}
    unknown = sorted(set(overrides) - set(DEFAULT_LR_MULT))
    if unknown:
        raise ValueError(f"unknown lr_mult group(s) {unknown}; known: {sorted(DEFAULT_LR_MULT)}")
    return {**DEFAULT_LR_MULT, **{name: float(value) for name, value in overrides.items()}}


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


def build_param_groups(model: nn.Module, cfg: Namespace, extra_params: Iterable[nn.Parameter] = ()) -> list[dict]:
    model = getattr(model, "module", model)  # accept a DDP-wrapped model
    groups = model.parameter_groups()
    unknown = sorted(set(groups) - set(DEFAULT_LR_MULT))
    if unknown:
        raise ValueError(f"model.parameter_groups() returned unknown group(s) {unknown}")
    _check_groups_cover_model(model, groups)
    multipliers = lr_multipliers(cfg)
    param_groups = []
    for name, params in groups.items():
        trainable = [param for param in params if param.requires_grad]
        if trainable:
            param_groups.append({"name": name, "params": trainable, "lr": cfg.lr * multipliers[name]})
    extra = [param for param in extra_params if param.requires_grad]
    if extra:
        param_groups.append({"name": "loss", "params": extra, "lr": cfg.lr})
    return param_groups


def build_optimizer(model: nn.Module, cfg: Namespace, extra_params: Iterable[nn.Parameter] = ()) -> torch.optim.Optimizer:
    """cfg.lr, cfg.optimizer (adamw|adam|sgd), cfg.weight_decay, cfg.lr_mult (group -> multiplier)."""
    param_groups = build_param_groups(model, cfg, extra_params)
    name = getattr(cfg, "optimizer", "adamw").lower()
    weight_decay = getattr(cfg, "weight_decay", 0.0)
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(param_groups, lr=cfg.lr, weight_decay=weight_decay)
    if name == "sgd":
        momentum = getattr(cfg, "momentum", 0.9)
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


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
    optimizer: torch.optim.Optimizer, cfg: Namespace, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Call scheduler.step() once per iteration.

    cfg.lr_schedule "step": factor = cfg.lr_decay_rate ** (step // (cfg.decay_epochs * steps_per_epoch));
    "cosine": cfg.warmup_steps of linear warm-up, then cosine to 0 at cfg.epochs * steps_per_epoch.
    """
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    schedule = getattr(cfg, "lr_schedule", "step")
    if schedule == "step":
        decay_epochs = getattr(cfg, "decay_epochs", 1)
        if decay_epochs <= 0:
            raise ValueError(f"decay_epochs must be positive, got {decay_epochs}")
        factor = StepDecay(getattr(cfg, "lr_decay_rate", 0.1), decay_epochs * steps_per_epoch)
    elif schedule == "cosine":
        factor = WarmupCosine(getattr(cfg, "warmup_steps", 0), cfg.epochs * steps_per_epoch)
    else:
        raise ValueError(f"unknown lr_schedule {schedule!r}; choose one of {SCHEDULES}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)
