"""ALBEF's image-text contrast with momentum distillation (Li et al., NeurIPS 2021), between the
query and the fused (item) embedding, term ``albef_itc``.

Each local query is scored against the momentum encoder's item features of the whole batch followed
by the queue's, and each local item against the momentum query features likewise; the columns carry
no gradient. The target of a row mixes its one-hot positive with the momentum model's own softmax
over the same columns:
  targets = ALBEF_ALPHA * softmax(scale * momentum_row @ columns^T) + (1 - ALBEF_ALPHA) * one_hot
and the term is the mean of the two directions' soft cross-entropies.

The momentum features are the model outputs "momentum_query" and "momentum_fused", the unit-norm
embeddings of the model's EMA copy (models/momentum.py); reading them makes the configuration build
that copy (``--model.momentum``, ALBEF's 0.995). The queue is the objective's cross-batch memory
(``--is_xbm``, mode "ours", ``--xbm_size`` rows; ALBEF keeps 65536): with this term computed it holds
the momentum features of past gathered (query, fused) pairs, a FIFO ring whose oldest rows are
dropped first. Without ``--is_xbm`` the columns are the batch's alone.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

from real20m.errors import InputError
from real20m.losses.contrastive import local_row_offset
from real20m.losses.terms import TermInputs, register_term

ALBEF_ALPHA = 0.4  # ALBEF's distillation weight


class QueueModeError(InputError, ValueError):
    """The original release's memory holds the current batch among its rows: it cannot be the queue."""


def distillation_targets(momentum_logits: Tensor, offset: int, alpha: float) -> Tensor:
    """alpha * softmax(momentum_logits) + (1 - alpha) * one-hot at column offset + i of row i."""
    positives = torch.arange(momentum_logits.shape[0], device=momentum_logits.device) + offset
    one_hot = F.one_hot(positives, momentum_logits.shape[1]).to(momentum_logits.dtype)
    return alpha * momentum_logits.softmax(dim=1) + (1 - alpha) * one_hot


def distilled_contrast(rows: Tensor, momentum_rows: Tensor, columns: Tensor, scale: Tensor | float,
                       offset: int, alpha: float) -> Tensor:
    """Mean soft cross-entropy of ``rows`` against ``columns`` with the distillation targets."""
    columns = columns.detach()
    targets = distillation_targets(scale * momentum_rows.detach() @ columns.t(), offset, alpha)
    return -(targets * F.log_softmax(scale * rows @ columns.t(), dim=1)).sum(dim=1).mean()


def with_queue(batch: Tensor, queue: Tensor | None) -> Tensor:
    return batch if queue is None else torch.cat([batch, queue.to(batch.dtype)], dim=0)


@register_term("albef_itc", default_weight=0.0, reads=("query", "fused"),
               gathers=("momentum_query", "momentum_fused"),
               needs="the momentum encoder (built by the configuration when this term is weighted)")
def albef_contrast(inputs: TermInputs) -> Tensor:
    """(query -> momentum items + queue) and (item -> momentum queries + queue) with momentum distillation."""
    if inputs.memory is not None and inputs.xbm_mode != "ours":
        raise QueueModeError("the albef_itc term queues past features in the cross-batch memory of --xbm_mode "
                             f"ours, not {inputs.xbm_mode!r}: drop --xbm_mode {inputs.xbm_mode} or the albef_itc "
                             "weight")
    query, fused = inputs.local["query"], inputs.local["fused"]
    queued_queries, queued_items = inputs.memory if inputs.memory is not None else (None, None)
    offset = local_row_offset(query.shape[0]) if inputs.offset is None else inputs.offset
    momentum_query, momentum_fused = inputs.local["momentum_query"], inputs.local["momentum_fused"]
    to_items = distilled_contrast(query, momentum_query, with_queue(inputs.gathered["momentum_fused"], queued_items),
                                  inputs.scale, offset, ALBEF_ALPHA)
    to_queries = distilled_contrast(fused, momentum_fused,
                                    with_queue(inputs.gathered["momentum_query"], queued_queries), inputs.scale,
                                    offset, ALBEF_ALPHA)
    return (to_items + to_queries) / 2
