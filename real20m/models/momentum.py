"""A momentum encoder (ALBEF, Li et al. 2021; MoCo): an exponential moving average of the model's
query and item path (text tower, vision tower, frame aggregation, fusion; not the caption decoder).

After every optimizer step each of its weights becomes
    theta_m <- m * theta_m + (1 - m) * theta          (ALBEF: m = 0.995, ``--model.momentum``)
where theta is the trained model's weight (``QCDModel.update_momentum``, called once per optimizer
step by the trainer). ALBEF updates at the top of each forward pass instead, which is the same
sequence of averages when every forward pass is one optimizer step: the update after step k is
the one ALBEF makes before step k + 1 (at step 1 ALBEF's copy equals the model, so its update is a
no-op). Under gradient accumulation one optimizer step runs 2N forward passes, so an update in
the forward pass would move the copy 2N times per step and differently for each micro-batch.

The copy takes no gradient and is no part of the optimizer (its parameters have
``requires_grad=False`` and names outside every learning-rate group). It runs in eval mode: its
features are distillation targets and queue entries, so it draws no dropout (which would also
shift the random stream the trained model's dropout draws from) and a CNN's BatchNorm normalises
by the averaged running statistics (floating-point buffers are averaged like the weights).

The model returns its unit-norm, gradient-free "momentum_query" and "momentum_fused" in training
mode; a loss term that reads them (``TermInputs`` key ``momentum_*``) makes the configuration
build this copy.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

ALBEF_MOMENTUM = 0.995
MOMENTUM_OUTPUTS = ("momentum_query", "momentum_fused")
# The parts of a QCDModel that embed queries and items, those the copy keeps.
ENCODER_PARTS = ("text", "vision", "frame", "pooling")
MOMENTUM_STATE_PREFIX = "momentum_encoder."   # its tensors' names in the model's state dict (QCDModel)


class MomentumEncoder(nn.Module):
    """An EMA copy of ``online`` (a QCDModel without a momentum encoder), made when the model is built."""

    def __init__(self, online: nn.Module, momentum: float):
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"the momentum of the momentum encoder must be in [0, 1], got {momentum}")
        self.momentum = float(momentum)
        copied = copy.deepcopy(online)
        for name, _ in list(copied.named_children()):
            if name not in ENCODER_PARTS:   # heads (the caption decoder, ...): the copy only embeds
                setattr(copied, name, None)
        self.model = copied.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        return super().train(False)   # always eval mode (module docstring)

    @torch.no_grad()
    def update(self, online: nn.Module) -> None:
        """theta_m <- m * theta_m + (1 - m) * theta for every floating-point tensor of the copy's
        state (weights and persistent buffers), theta the one of the same name in ``online``; other
        buffers (counters) are copied."""
        current = online.state_dict(keep_vars=True)
        averaged, latest = [], []
        for name, tensor in self.model.state_dict(keep_vars=True).items():
            if tensor.is_floating_point():
                averaged.append(tensor.data)
                latest.append(current[name].data)
            else:
                tensor.copy_(current[name])
        # One fused kernel per operation instead of two per tensor.
        torch._foreach_mul_(averaged, self.momentum)
        torch._foreach_add_(averaged, latest, alpha=1.0 - self.momentum)

    @torch.no_grad()
    def forward(self, batch: dict) -> dict:
        """{"momentum_query", "momentum_fused"}: the copy's (B, D) unit-norm embeddings of the batch."""
        query = F.normalize(self.model.query_features(batch["query_ids"], batch["query_mask"]), dim=-1)
        fused = self.model.encode_items(batch["title_ids"], batch.get("title_mask"), batch["pixels"]).fused
        return dict(zip(MOMENTUM_OUTPUTS, (query, fused)))
