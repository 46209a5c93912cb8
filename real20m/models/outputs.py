"""Training outputs beyond the model's own, one registry entry each.

``QCDModel.forward`` returns its embeddings ("query", "title", "visual", "fused", ...) and then,
for each registered output, ``compute(model, batch, outputs)``, so a new loss term can read a new
quantity by name (``register_term(..., reads=(name,))``) without a change to the model. An output
is per sample, its first dimension the batch: gradient accumulation concatenates the outputs of
its micro-batches along it.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

OutputFn = Callable[[nn.Module, dict, dict], Tensor]

EXTRA_OUTPUTS: dict[str, OutputFn] = {}


def register_output(name: str):
    """Decorator: add ``fn(model, batch, outputs) -> (B, ...) tensor`` to the training outputs as ``name``."""
    def add(compute: OutputFn) -> OutputFn:
        if name in EXTRA_OUTPUTS:
            raise ValueError(f"model output {name!r} is already registered")
        EXTRA_OUTPUTS[name] = compute
        return compute
    return add


def add_registered_outputs(model: nn.Module, batch: dict, outputs: dict) -> dict:
    """``outputs`` with every registered output added (computed in registration order, so one may
    read an earlier one)."""
    for name, compute in EXTRA_OUTPUTS.items():
        if name in outputs:
            raise ValueError(f"model output {name!r} is registered, but the model returns it already")
        outputs[name] = compute(model, batch, outputs)
    return outputs
