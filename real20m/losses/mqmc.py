"""MQMC's category-aware multi-queue contrast (Du et al., "Multi-queue Momentum Contrast for
Microvideo-Product Retrieval", WSDM 2023), as a term of the query-guided objective: ``mqmc``.

MQMC keeps one queue of momentum-encoder features per item category and weights each negative by
how its category relates to the anchor's: a negative of the anchor's own category is a hard one and
keeps its full weight, a negative of another category is easier and counts for less. Here the
anchor is the query (its category is that of its item), its positive the item's fused embedding,
and the negatives are the other items of the gathered batch followed by every queue's momentum
features; the item -> query direction scores each item against the gathered queries with the same
weights. A row's loss is
  -log( exp(s_pos) / (exp(s_pos) + sum_j w_j exp(s_j)) ),  w_j = 1 (same category) or MQMC_OTHER_WEIGHT,
computed as a cross-entropy of the logits plus log w. A negative whose category is unknown (-100)
keeps weight 1. What is ours: the paper's weights of other categories follow the distance between
category centroids on a two-level ontology; here they are one constant, as the synthetic data has
one level of categories. The queues hold MQMC_QUEUE_SIZE features per category, the newest
replacing the oldest, written after the step from the gathered batch's momentum features.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from real20m.losses.contrastive import local_row_offset
from real20m.losses.terms import TermInputs, TermSetting, register_term

MQMC_OTHER_WEIGHT = 0.5   # the weight of a negative of another category (same category: 1)
MQMC_QUEUE_SIZE = 64      # momentum features kept per category
UNKNOWN_CATEGORY = -100


def negative_log_weights(anchor: Tensor, columns: Tensor, other_weight: float) -> Tensor:
    """(R, N) log-weights: 0 where a column's category is the anchor's or unknown, log(other_weight) elsewhere."""
    same = (anchor[:, None] == columns[None, :]) | (anchor[:, None] == UNKNOWN_CATEGORY) | \
        (columns[None, :] == UNKNOWN_CATEGORY)
    return torch.where(same, 0.0, math.log(other_weight)).to(torch.float32)


def weighted_contrast(rows: Tensor, columns: Tensor, log_weights: Tensor, scale: Tensor | float,
                      offset: int) -> Tensor:
    """Mean cross-entropy of ``rows`` against ``columns`` (positive of row i: column offset + i),
    each logit shifted by its negative's log-weight (the positive keeps weight 1)."""
    positives = torch.arange(rows.shape[0], device=rows.device) + offset
    log_weights = log_weights.clone()
    log_weights[torch.arange(rows.shape[0], device=rows.device), positives] = 0.0
    return F.cross_entropy(scale * rows @ columns.t() + log_weights.to(rows.dtype), positives)


class CategoryQueues(nn.Module):
    """One FIFO queue of ``size`` (dim,) features per category; registered buffers, so the queues
    are saved with the objective and a resumed run continues with the same negatives."""

    def __init__(self, categories: int, size: int, dim: int):
        super().__init__()
        if categories <= 0 or size <= 0 or dim <= 0:
            raise ValueError(f"CategoryQueues needs categories, size and dim > 0, got {categories}, {size}, {dim}")
        self.register_buffer("features", torch.zeros(categories, size, dim))
        self.register_buffer("ptr", torch.zeros(categories, dtype=torch.long))
        self.register_buffer("filled", torch.zeros(categories, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, features: Tensor, categories: Tensor) -> None:
        """Each row into its category's queue in row order (rows of an unknown category are left out;
        of more than ``size`` rows of one category, the last ``size``). No host sync: on a GPU the
        queues are written by the device alone."""
        known = categories != UNKNOWN_CATEGORY
        features, categories = features.detach()[known], categories[known]
        size = self.features.shape[1]
        one_hot = F.one_hot(categories, self.features.shape[0])
        rows = torch.arange(categories.shape[0], device=categories.device)
        order = one_hot.cumsum(0)[rows, categories] - 1          # the row's rank within its category
        counts = one_hot.sum(0)
        newest = order >= counts[categories] - size               # older rows would be overwritten anyway
        slots = (self.ptr[categories] + order) % size
        self.features[categories[newest], slots[newest]] = features[newest].to(self.features.dtype)
        self.ptr.copy_((self.ptr + counts) % size)
        self.filled.copy_(torch.clamp(self.filled + counts, max=size))

    def contents(self) -> tuple[Tensor, Tensor]:
        """(features (M, dim), categories (M,)) of every filled slot, category by category."""
        categories, size = self.features.shape[:2]
        filled = torch.arange(size, device=self.filled.device)[None, :] < self.filled[:, None]
        labels = torch.arange(categories, device=self.filled.device)[:, None].expand(categories, size)
        return self.features[filled], labels[filled]


def category_queues(setting: TermSetting) -> CategoryQueues:
    return CategoryQueues(setting.categories, MQMC_QUEUE_SIZE, setting.dim)


@register_term("mqmc", default_weight=0.0, reads=("query", "fused", "momentum_query", "momentum_fused", "category"),
               gathers=("momentum_query", "momentum_fused", "category"), state=category_queues,
               needs="the momentum encoder and batches with category labels, both made when the configuration is "
                     "resolved with loss.weights.mqmc set and a cluster file to read the categories from")
def multi_queue_contrast(inputs: TermInputs) -> Tensor:
    """(query -> momentum items of the batch + every category queue) and (item -> momentum queries
    of the batch), negatives weighted by category; then the batch's momentum items are queued."""
    query, fused, labels = inputs.local["query"], inputs.local["fused"], inputs.local["category"]
    batch_items, batch_labels = inputs.gathered["momentum_fused"], inputs.gathered["category"]
    queued, queued_labels = inputs.state.contents()
    items = torch.cat([batch_items, queued.to(batch_items.dtype)])
    item_labels = torch.cat([batch_labels, queued_labels])
    offset = local_row_offset(query.shape[0]) if inputs.offset is None else inputs.offset
    to_items = weighted_contrast(query, items, negative_log_weights(labels, item_labels, MQMC_OTHER_WEIGHT),
                                 inputs.scale, offset)
    to_queries = weighted_contrast(fused, inputs.gathered["momentum_query"],
                                   negative_log_weights(labels, batch_labels, MQMC_OTHER_WEIGHT), inputs.scale, offset)
    if inputs.update_state:
        inputs.state.enqueue(batch_items, batch_labels)
    return (to_items + to_queries) / 2
