"""CyCLIP's consistency regularisers (Goel et al., NeurIPS 2022) between the query and the fused
(item) embedding, as one term ``cyclip``.

With unit embeddings q (queries) and v (items) of the whole batch and cosine similarities:
  cross-modal: mean over (j, k) of (<q_j, v_k> - <q_k, v_j>)^2  (a mismatched pair scores alike both ways)
  in-modal:    mean over (j, k) of (<q_j, q_k> - <v_j, v_k>)^2  (the two spaces share their geometry)
Both are averaged over all N^2 pairs as in the paper, with no temperature. The paper weights each
by 0.25 on top of the contrastive loss; here they share one weight, so ``--loss.weights.cyclip 0.25``
is the paper's setting next to the fused InfoNCE term.
"""
from torch import Tensor

from real20m.losses.terms import TermInputs, register_term


def cross_modal_cyclic(queries: Tensor, items: Tensor) -> Tensor:
    similarity = queries @ items.t()
    return (similarity - similarity.t()).pow(2).mean()


def in_modal_cyclic(queries: Tensor, items: Tensor) -> Tensor:
    return (queries @ queries.t() - items @ items.t()).pow(2).mean()


@register_term("cyclip", default_weight=0.0, gathers=("query", "fused"))
def cyclip_consistency(inputs: TermInputs) -> Tensor:
    """Cross-modal plus in-modal cyclic consistency over the gathered (all-rank) batch."""
    queries, items = inputs.gathered["query"], inputs.gathered["fused"]
    return cross_modal_cyclic(queries, items) + in_modal_cyclic(queries, items)
