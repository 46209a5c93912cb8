"""Gradient accumulation that keeps the negatives of the whole accumulated batch (``--accum_freq N``).

A contrastive loss is not a sum over samples: each sample's term depends on every negative of its
batch, so summing the gradients of N separate small batches is not the gradient of one large
batch. As open_clip does, one optimizer step here
  1. runs the model without gradients on its N micro-batches of B samples and keeps the outputs;
  2. for each micro-batch j: runs the model on it again, with gradients, puts these outputs in
     place of the j-th kept ones, scores the concatenated N x B outputs with the objective and
     backpropagates.
Only one micro-batch's activations are alive at a time. In pass j the other micro-batches' outputs
are constants, so pass j yields exactly the part of the gradient that flows through micro-batch j,
and the N passes sum to the gradient of the objective over one batch of N x B.

What keeps the sum exact, and the run coherent:
* Data: the training sampler is built for batches of N x B (``data.step_batch_size``), so one
  loader batch is one optimizer step, cut here into N micro-batches. The step's samples share one bucket (source,
  query cluster) as any batch does, and its texts are padded alike in every micro-batch. The epoch
  length, the LR schedule, ``global_step``, ``--max_steps``, ``--save_freq``, ``--print_freq`` and
  the resume position ``batch_in_epoch`` count optimizer steps, as without accumulation: a run with
  ``--batch_size B --accum_freq N`` reads the data of a run with ``--batch_size N*B``.
* Parameters of the objective (a learnable logit scale) receive the whole batch's gradient in every
  pass rather than a share of it; their summed gradient is divided by N.
* The cross-batch memory takes the step's batch once: the original's XBM writes it before scoring,
  so in the first pass (and every pass then scores against it, as one batch of N x B would); ours
  enqueues it after scoring, so in the last pass.
* A momentum encoder (models/momentum.py) runs in eval mode and is averaged once per optimizer
  step, after it (``apply_gradients``): every pass of a step sees the same momentum features.
* Random ops: pass j replays the RNG state its no-gradient forward started from, so dropout draws
  the same masks and the kept outputs are the recomputed ones; afterwards the RNG continues from
  where the no-gradient forwards left it. Masks are drawn per micro-batch, so with dropout the
  random draws (not the computation) differ from those of one batch of N x B.
* BatchNorm (the tiny config's CNN) normalises each micro-batch by its own statistics, as it would
  a batch of B: with BatchNorm the sum is the gradient of N batches of B under the full batch's
  negatives, not of one batch of N x B. Its running statistics are updated by the gradient passes
  only, once per micro-batch.
* DDP: the first N - 1 backward passes run under ``no_sync``; the last one averages the summed
  gradients over the ranks. Every pass gathers all ranks' embeddings, in the same order everywhere.
The values returned for the log are the last pass's: the objective over the full N x B batch.
Cost: 2N forward passes (N of them without gradients), and the kept outputs of N x B samples, the
caption decoder's (N x B, query length, vocabulary) logits included.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


def split_batch(batch: dict, size: int) -> list[dict]:
    """Cut a collated batch into micro-batches of ``size`` samples (the last one smaller if need
    be): every tensor along its first (sample) dimension, nested item pairs alike. Other entries
    (the source name, the data-issue list) describe the whole batch and are passed on as they are."""
    rows = batch["title_ids"].shape[0]

    def part(value, begin: int):
        if torch.is_tensor(value):
            return value[begin:begin + size]
        if isinstance(value, dict):
            return {key: part(item, begin) for key, item in value.items()}
        return value
    return [part(batch, begin) for begin in range(0, rows, size)]


def concat_outputs(parts: list[dict]) -> dict:
    """The model outputs of the micro-batches as those of one batch. Every output is per sample
    (embeddings (B, D); caption logits (B, L, V) and targets (B, L), L alike in all micro-batches
    because they are cut from one collated batch)."""
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


class MicroBatchStep(nn.Module):
    """Model + objective as one module (as ``TrainStep``: DDP sees every trained parameter) for one
    micro-batch of an accumulated step: its outputs replace the kept ones of that micro-batch and
    the objective scores the whole accumulated batch."""

    def __init__(self, model: nn.Module, criterion: nn.Module):
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, batch: dict, kept: list[dict], index: int, write_memory: bool):
        parts = kept[:index] + [self.model(batch)] + kept[index + 1:]
        return self.criterion(concat_outputs(parts), write_memory=write_memory)


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple, device: torch.device) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


@contextlib.contextmanager
def frozen_batch_norm_statistics(model: nn.Module):
    """BatchNorm running statistics as they were before the block: the no-gradient passes must not
    count each micro-batch twice."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [{name: buffer.clone() for name, buffer in m.named_buffers(recurse=False)} for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in zip(norms, saved):
                for name, value in buffers.items():
                    getattr(m, name).copy_(value)


def accumulate_gradients(step_module: nn.Module, batch: dict, micro_batch_size: int,
                         autocast: Callable[[], ContextManager], backward: Callable[[Tensor], None],
                         device: torch.device) -> dict[str, float]:
    """Add to the parameters' ``.grad`` the gradient of the objective over ``batch``, computed
    ``micro_batch_size`` samples at a time (see the module docstring); returns the logged terms.

    ``step_module``: a ``MicroBatchStep``, possibly inside DDP; ``autocast()``: the mixed-precision
    context of a forward pass; ``backward(loss)``: backpropagates a loss (through the grad scaler)."""
    distributed = isinstance(step_module, DistributedDataParallel)
    module = step_module.module if distributed else step_module
    micro_batches = split_batch(batch, micro_batch_size)
    kept, rng_states = [], []
    with torch.no_grad(), frozen_batch_norm_statistics(module.model):
        for micro in micro_batches:
            rng_states.append(_rng_state(device))
            with autocast():
                kept.append(module.model(micro))
    after = _rng_state(device)

    last = len(micro_batches) - 1
    write_index = 0 if module.criterion.writes_memory_first else last
    for index, micro in enumerate(micro_batches):
        _set_rng_state(rng_states[index], device)
        sync = step_module.no_sync() if distributed and index < last else contextlib.nullcontext()
        with sync:
            with autocast():
                loss, terms = step_module(micro, kept, index, index == write_index)
            backward(loss)
    _set_rng_state(after, device)
    for parameter in module.criterion.parameters():
        if parameter.grad is not None:
            parameter.grad.div_(len(micro_batches))
    return terms
