"""ALBEF's contrast with momentum distillation against numpy: the distillation targets, the soft
cross-entropy over the batch and the queue, the queue's FIFO order (what is dropped); and a short
training run that lowers the ``albef_itc`` term."""
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


def reference_contrast(rows, columns, alpha):
    """Soft cross-entropy with targets alpha * softmax + (1 - alpha) * one-hot at column i (numpy)."""
    logits = SCALE * rows @ columns.T
    targets = alpha * softmax(logits) + (1 - alpha) * np.eye(*logits.shape)
    return -(targets * np.log(softmax(logits))).sum(axis=1).mean()


def unit_rows(seed, count=3, dim=4):
    values = np.random.default_rng(seed).normal(size=(count, dim))
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def batch_outputs(seed):
    query, fused = unit_rows(seed), unit_rows(seed + 100)
    return {name: torch.tensor(value, dtype=torch.float32)
            for name, value in (("query", query), ("fused", fused), ("title", fused), ("visual", fused))}


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


def test_the_term_scores_the_batch_then_the_fifo_queue_of_past_pairs():
    objective = QCDLoss({"caption": 0.0, "albef_itc": 1.0}, memory=MemorySpec(size=4, dim=4))
    first, second, third = batch_outputs(0), batch_outputs(1), batch_outputs(2)
    _, terms = objective(first)   # an empty queue: in-batch columns only
    in_batch = [reference_contrast(unit_rows(0), unit_rows(100), ALBEF_ALPHA),
                reference_contrast(unit_rows(100), unit_rows(0), ALBEF_ALPHA)]
    assert terms["albef_itc"] == pytest.approx(sum(in_batch) / 2, rel=1e-5)
    objective(second)
    # 4 rows hold 6 past pairs: the first batch's rows 0 and 1, the oldest, are dropped.
    queued_queries = np.concatenate([unit_rows(0)[2:], unit_rows(1)])
    queued_items = np.concatenate([unit_rows(100)[2:], unit_rows(101)])
    kept = sorted(objective.memory.negatives()[0][:, 0].tolist())
    np.testing.assert_allclose(kept, sorted(queued_queries[:, 0]), rtol=1e-6)

    _, terms = objective(third)
    query, fused = unit_rows(2), unit_rows(102)
    expected = (reference_contrast(query, np.concatenate([fused, queued_items]), ALBEF_ALPHA)
                + reference_contrast(fused, np.concatenate([query, queued_queries]), ALBEF_ALPHA)) / 2
    assert terms["albef_itc"] == pytest.approx(expected, rel=1e-5)


def test_the_original_memory_is_refused_as_a_queue():
    objective = QCDLoss({"caption": 0.0, "albef_itc": 1.0}, memory=MemorySpec(size=8, dim=4, mode="original"))
    with pytest.raises(InputError, match="albef_itc term queues past features in the cross-batch memory of "
                                         "--xbm_mode ours"):
        objective(outputs())


def test_training_on_the_term_lowers_it(tiny_data_root, tmp_path):
    values = train_term_alone("albef_itc", tiny_data_root, tmp_path, 40)
    assert mean(values[-10:]) < 0.6 * mean(values[:10]), values
