"""ALBEF's contrast with momentum distillation against numpy: the distillation targets, the soft
cross-entropy over the momentum features of the batch and the queue, the queue's FIFO order (what
is dropped) and its content (momentum features, not current ones); and a short training run that
lowers the ``albef_itc`` term."""
import numpy as np
import pytest
import torch

from real20m.losses import QCDLoss
from real20m.errors import InputError
from real20m.losses.albef import ALBEF_ALPHA, distillation_targets, distilled_contrast
from real20m.losses.memory_bank import MemorySpec

from .comparison_training import mean, train_term_alone
from .test_qcd_loss import outputs

SCALE = 20.0


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def reference_contrast(rows, columns, alpha, momentum_rows=None):
    """Soft cross-entropy of ``rows`` against ``columns`` with targets alpha * softmax(momentum_rows
    scores) + (1 - alpha) * one-hot at column i (numpy); the momentum rows default to the rows."""
    momentum_rows = rows if momentum_rows is None else momentum_rows
    logits = SCALE * rows @ columns.T
    targets = alpha * softmax(SCALE * momentum_rows @ columns.T) + (1 - alpha) * np.eye(*logits.shape)
    return -(targets * np.log(softmax(logits))).sum(axis=1).mean()


def unit_rows(seed, count=3, dim=4):
    values = np.random.default_rng(seed).normal(size=(count, dim))
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def batch_outputs(seed):
    """Current embeddings of seed (queries) and seed + 100 (items); the momentum encoder's of seed + 200
    and seed + 300, unlike them."""
    query, fused = unit_rows(seed), unit_rows(seed + 100)
    values = (("query", query), ("fused", fused), ("title", fused), ("visual", fused),
              ("momentum_query", unit_rows(seed + 200)), ("momentum_fused", unit_rows(seed + 300)))
    return {name: torch.tensor(value, dtype=torch.float32) for name, value in values}


def test_targets_mix_the_momentum_softmax_with_the_one_hot_positive():
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0], [0.5, 0.5, 3.0, 0.0]], dtype=torch.float64)
    targets = distillation_targets(logits, offset=1, alpha=0.4).numpy()
    # Row 0's positive is column 1, row 1's column 2: (1 - 0.4) there, plus 0.4 x the softmax everywhere.
    one_hot = np.array([[0, 1, 0, 0], [0, 0, 1, 0]])
    np.testing.assert_allclose(targets, 0.4 * softmax(logits.numpy()) + 0.6 * one_hot, rtol=1e-12)
    np.testing.assert_allclose(targets.sum(axis=1), [1.0, 1.0], rtol=1e-12)
    np.testing.assert_array_equal(distillation_targets(logits, 1, 0.0).numpy(), one_hot)  # alpha 0: plain InfoNCE


def test_the_contrast_is_the_soft_cross_entropy_and_its_columns_get_no_gradient():
    rows = torch.tensor(unit_rows(0), requires_grad=True)
    columns = torch.tensor(unit_rows(1, count=5), requires_grad=True)
    value = distilled_contrast(rows, rows, columns, SCALE, 0, ALBEF_ALPHA)
    assert value.item() == pytest.approx(reference_contrast(unit_rows(0), unit_rows(1, count=5), ALBEF_ALPHA),
                                         rel=1e-10)
    value.backward()
    assert columns.grad is None and rows.grad.abs().sum() > 0   # the columns stand for momentum features


def test_the_targets_and_columns_are_the_momentum_features_not_the_current_ones():
    objective = QCDLoss({"caption": 0.0, "albef_itc": 1.0})
    _, terms = objective(batch_outputs(0))   # no queue: in-batch columns only
    query, fused, momentum_query, momentum_fused = unit_rows(0), unit_rows(100), unit_rows(200), unit_rows(300)
    expected = (reference_contrast(query, momentum_fused, ALBEF_ALPHA, momentum_query)
                + reference_contrast(fused, momentum_query, ALBEF_ALPHA, momentum_fused)) / 2
    assert terms["albef_itc"] == pytest.approx(expected, rel=1e-5)
    current_only = (reference_contrast(query, fused, ALBEF_ALPHA) + reference_contrast(fused, query, ALBEF_ALPHA)) / 2
    assert terms["albef_itc"] != pytest.approx(current_only, rel=1e-2)


def test_the_queue_keeps_momentum_features_first_in_first_out():
    objective = QCDLoss({"caption": 0.0, "albef_itc": 1.0}, memory=MemorySpec(size=4, dim=4))
    objective(batch_outputs(0))
    objective(batch_outputs(1))
    # 4 rows hold 6 past pairs of momentum features: the first batch's rows 0 and 1, the oldest, are dropped.
    queued_queries = np.concatenate([unit_rows(200)[2:], unit_rows(201)])
    queued_items = np.concatenate([unit_rows(300)[2:], unit_rows(301)])
    # The ring: the second batch's rows went to slots 3, 0, 1 (after the first batch's 0, 1, 2).
    ring = [2, 3, 0, 1]
    bank_queries, bank_items = (value.numpy() for value in objective.memory.negatives())
    np.testing.assert_allclose(bank_queries, queued_queries[ring], rtol=1e-6)
    np.testing.assert_allclose(bank_items, queued_items[ring], rtol=1e-6)

    _, terms = objective(batch_outputs(2))
    query, fused, momentum_query, momentum_fused = unit_rows(2), unit_rows(102), unit_rows(202), unit_rows(302)
    expected = (reference_contrast(query, np.concatenate([momentum_fused, queued_items]), ALBEF_ALPHA, momentum_query)
                + reference_contrast(fused, np.concatenate([momentum_query, queued_queries]), ALBEF_ALPHA,
                                     momentum_fused)) / 2
    assert terms["albef_itc"] == pytest.approx(expected, rel=1e-5)


def test_without_a_momentum_encoder_the_term_names_what_it_needs():
    objective = QCDLoss({"caption": 0.0, "albef_itc": 1.0})
    with pytest.raises(KeyError, match="needs the momentum encoder"):
        objective(outputs())


def test_the_original_memory_is_refused_as_a_queue():
    objective = QCDLoss({"caption": 0.0, "albef_itc": 1.0}, memory=MemorySpec(size=8, dim=4, mode="original"))
    with pytest.raises(InputError, match="albef_itc term queues past features in the cross-batch memory of "
                                         "--xbm_mode ours"):
        objective({**outputs(), **{name: value for name, value in batch_outputs(0).items() if "momentum" in name}})


def test_training_on_the_term_lowers_it(tiny_data_root, tmp_path):
    # The momentum encoder moves faster than ALBEF's 0.995 (which covers 18% of the way in 40 steps),
    # so that its distillation targets sharpen within this short run.
    values = train_term_alone("albef_itc", tiny_data_root, tmp_path, 40, "--model.momentum", "0.9")
    assert mean(values[-10:]) < 0.6 * mean(values[:10]), values
