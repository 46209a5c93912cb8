"""Margin ranking against the hardest in-batch negative (the max-violation hinge of VSE++), term ``rank``.

For each local query the score of its own fused item must beat that of the most similar other
item of the (gathered) batch by ``RANK_MARGIN``, and for each local item the same holds against the
most similar other query; the two directions' mean hinges are summed. Scores are cosine
similarities (no temperature). Term options have no place in the configuration, so the margin is
this module's constant.
"""
import torch
from torch import Tensor

from real20m.losses.contrastive import local_row_offset
from real20m.losses.terms import TermInputs, register_term

RANK_MARGIN = 0.2


def hardest_negative_hinge(rows: Tensor, columns: Tensor, offset: int, margin: float) -> Tensor:
    """mean_i max(0, margin - s(i, offset + i) + max_{j != offset + i} s(i, j)), s = rows @ columns^T."""
    scores = rows @ columns.t()
    positives = torch.arange(rows.shape[0], device=rows.device) + offset
    positive_scores = scores.gather(1, positives[:, None]).squeeze(1)
    is_positive = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, positives[:, None], True)
    hardest = scores.masked_fill(is_positive, float("-inf")).max(dim=1).values
    return (margin - positive_scores + hardest).clamp(min=0).mean()


@register_term("rank", default_weight=0.0, gathers=("query", "fused"))
def hardest_negative_ranking(inputs: TermInputs) -> Tensor:
    """query -> item plus item -> query hinge, negatives from every rank."""
    query, fused = inputs.local["query"], inputs.local["fused"]
    offset = local_row_offset(query.shape[0]) if inputs.offset is None else inputs.offset
    return (hardest_negative_hinge(query, inputs.gathered["fused"], offset, RANK_MARGIN)
            + hardest_negative_hinge(fused, inputs.gathered["query"], offset, RANK_MARGIN))
