"""Goods-category classification, term ``category``: cross-entropy of the category head's logits
on the fused (item) embedding against each training sample's goods category.

The labels come with the batch (datasets/categories.py: a goods item's own category, a video's
query's category) and the model passes them through as the output "category"; an unknown category
(-100) is left out of the mean. The head exists only while this term is weighted (the
configuration derives ``model.category_classes``), as the original release's category loss does.
"""
import torch.nn.functional as F
from torch import Tensor

from real20m.losses.terms import IGNORE_INDEX, TermInputs, register_term


@register_term("category", default_weight=0.0, reads=("category_logits", "category"),
               needs="a model with a category head and batches with category labels, both made when the "
                     "configuration is resolved with loss.weights.category set and a cluster file to read "
                     "the categories from")
def category_classification(inputs: TermInputs) -> Tensor:
    """Mean cross-entropy over the samples of known category (0 for a batch with none)."""
    logits, labels = inputs.outputs["category_logits"].float(), inputs.outputs["category"]
    # Summed and divided by the known count (at least 1) rather than reduced by mean: a batch
    # with no known category gives 0 instead of 0/0, with no device-to-host sync to test for it.
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)
