"""MQMC's category-aware contrast: the weighted cross-entropy against a per-row numpy loop, the
category weights, the per-category queues' FIFO order, the term in the objective (its queues as
its state: read, then written once per training step, saved with the objective) and a short
training run that lowers it."""
import math

import numpy as np
import pytest
import torch

from real20m.losses import QCDLoss
from real20m.losses.mqmc import (MQMC_OTHER_WEIGHT, UNKNOWN_CATEGORY, CategoryQueues, negative_log_weights,
                                 weighted_contrast)
from real20m.losses.terms import TermSetting

from .comparison_training import mean, train_term_alone
from .test_qcd_loss import outputs


def reference_loss(rows, columns, row_categories, column_categories, scale, offset, other_weight):
    """-log(e^pos / (e^pos + sum_j w_j e^neg_j)) per row, averaged: a plain loop."""
    losses = []
    for i, row in enumerate(rows):
        positive = offset + i
        denominator = 0.0
        for j, column in enumerate(columns):
            weight = 1.0
            if j != positive and UNKNOWN_CATEGORY not in (row_categories[i], column_categories[j]) \
                    and row_categories[i] != column_categories[j]:
                weight = other_weight
            denominator += weight * math.exp(scale * float(row @ column))
        losses.append(-(scale * float(row @ columns[positive]) - math.log(denominator)))
    return float(np.mean(losses))


def unit_rows(generator, count, dim=8):
    rows = generator.standard_normal((count, dim))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_the_weighted_contrast_matches_a_loop_over_rows_and_columns():
    generator = np.random.default_rng(0)
    rows, columns = unit_rows(generator, 4), unit_rows(generator, 9)
    row_categories = np.array([0, 1, 2, UNKNOWN_CATEGORY])
    column_categories = np.array([3, 0, 1, 1, 2, 0, UNKNOWN_CATEGORY, 2, 1])
    log_weights = negative_log_weights(torch.tensor(row_categories), torch.tensor(column_categories),
                                       MQMC_OTHER_WEIGHT)
    loss = weighted_contrast(torch.tensor(rows), torch.tensor(columns), log_weights, 5.0, offset=1)
    expected = reference_loss(rows, columns, row_categories, column_categories, 5.0, 1, MQMC_OTHER_WEIGHT)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_weights_of_one_everywhere_give_the_plain_infonce():
    generator = np.random.default_rng(1)
    rows, columns = torch.tensor(unit_rows(generator, 3)), torch.tensor(unit_rows(generator, 5))
    log_weights = negative_log_weights(torch.tensor([0, 0, 0]), torch.tensor([0, 0, 0, 0, 0]), MQMC_OTHER_WEIGHT)
    plain = torch.nn.functional.cross_entropy(4.0 * rows @ columns.t(), torch.arange(3))
    assert weighted_contrast(rows, columns, log_weights, 4.0, offset=0).item() == pytest.approx(plain.item())


def test_an_easier_other_category_negative_lowers_the_loss():
    rows = torch.tensor([[1.0, 0.0]])
    columns = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    same = weighted_contrast(rows, columns, negative_log_weights(torch.tensor([0]), torch.tensor([0, 0]), 0.5), 10.0, 0)
    other = weighted_contrast(rows, columns, negative_log_weights(torch.tensor([0]), torch.tensor([0, 1]), 0.5), 10.0,
                              0)
    assert other < same


def test_each_category_queue_keeps_its_newest_rows_in_fifo_order():
    queues = CategoryQueues(categories=3, size=2, dim=1)
    values = torch.arange(1.0, 7.0)[:, None]
    queues.enqueue(values[:4], torch.tensor([0, 0, 2, 0]))
    queues.enqueue(values[4:], torch.tensor([UNKNOWN_CATEGORY, 2]))
    features, categories = queues.contents()
    # Category 0 got 1, 2, 4: 4 replaced the oldest (1) in its slot; category 1 nothing; category 2: 3, 6.
    assert features[:, 0].tolist() == [4.0, 2.0, 3.0, 6.0]
    assert categories.tolist() == [0, 0, 2, 2]
    assert queues.filled.tolist() == [2, 0, 2] and queues.ptr.tolist() == [1, 0, 0]


def test_more_rows_of_a_category_than_its_queue_holds_leave_the_newest():
    queues = CategoryQueues(categories=2, size=2, dim=1)
    queues.enqueue(torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]]), torch.tensor([1, 1, 0, 1, 1]))
    features, categories = queues.contents()
    # Category 1 received 1, 2, 4, 5 in a ring of 2: 4 and 5 remain, 5 in slot 1 (the 4th write).
    assert (features[:, 0].tolist(), categories.tolist()) == ([3.0, 4.0, 5.0], [0, 1, 1])
    assert queues.ptr.tolist() == [1, 0] and queues.filled.tolist() == [1, 2]


def test_the_queues_are_saved_with_the_state_dict():
    queues = CategoryQueues(categories=2, size=3, dim=2)
    queues.enqueue(torch.ones(2, 2), torch.tensor([1, 1]))
    restored = CategoryQueues(categories=2, size=3, dim=2)
    restored.load_state_dict(queues.state_dict())
    assert [tensor.tolist() for tensor in restored.contents()] == [tensor.tolist() for tensor in queues.contents()]


def momentum_outputs(generator, categories):
    """The objective's inputs for 3 samples with momentum features unlike the current ones."""
    out = outputs()
    for name in ("query", "fused"):
        out[f"momentum_{name}"] = torch.tensor(unit_rows(generator, 3, dim=out[name].shape[1]), dtype=torch.float32)
    out["category"] = torch.tensor(categories, dtype=torch.int64)
    return out


def test_in_the_objective_the_term_scores_momentum_columns_then_queues_them():
    generator = np.random.default_rng(2)
    objective = QCDLoss({"caption": 0.0, "mqmc": 1.0}, logit_scale=10.0, setting=TermSetting(dim=4, categories=3))
    first, second = momentum_outputs(generator, [0, 2, 2]), momentum_outputs(generator, [1, 2, UNKNOWN_CATEGORY])
    _, terms = objective(first)
    categories = np.array([0, 2, 2])
    expected = (reference_loss(first["query"].numpy(), first["momentum_fused"].numpy(), categories, categories, 10.0,
                               0, MQMC_OTHER_WEIGHT)
                + reference_loss(first["fused"].numpy(), first["momentum_query"].numpy(), categories, categories,
                                 10.0, 0, MQMC_OTHER_WEIGHT)) / 2
    assert terms["mqmc"] == pytest.approx(expected, rel=1e-5)
    queues = objective.term_states["mqmc"]
    assert queues.filled.tolist() == [1, 0, 2]
    # The second step's queries also meet the first step's queued momentum items, category by category.
    _, terms = objective(second)
    columns = np.concatenate([second["momentum_fused"].numpy(), first["momentum_fused"].numpy()[[0, 1, 2]]])
    column_categories = np.array([1, 2, UNKNOWN_CATEGORY, 0, 2, 2])
    row_categories = np.array([1, 2, UNKNOWN_CATEGORY])
    expected = (reference_loss(second["query"].numpy(), columns, row_categories, column_categories, 10.0, 0,
                               MQMC_OTHER_WEIGHT)
                + reference_loss(second["fused"].numpy(), second["momentum_query"].numpy(), row_categories,
                                 row_categories, 10.0, 0, MQMC_OTHER_WEIGHT)) / 2
    assert terms["mqmc"] == pytest.approx(expected, rel=1e-5)
    assert queues.filled.tolist() == [1, 1, 3]


def test_the_queues_are_written_only_while_training_and_saved_with_the_objective():
    generator = np.random.default_rng(3)
    objective = QCDLoss({"caption": 0.0, "mqmc": 1.0}, setting=TermSetting(dim=4, categories=2)).eval()
    objective(momentum_outputs(generator, [0, 1, 1]))
    assert objective.term_states["mqmc"].filled.tolist() == [0, 0]
    objective.train()(momentum_outputs(generator, [0, 1, 1]), write_memory=False)   # an accumulation replay
    assert objective.term_states["mqmc"].filled.tolist() == [0, 0]
    objective(momentum_outputs(generator, [0, 1, 1]))
    assert objective.term_states["mqmc"].filled.tolist() == [1, 2]
    assert "term_states.mqmc.features" in objective.state_dict()
    assert not any(key.startswith("term_states") for key in QCDLoss({"caption": 0.0}).state_dict())


def test_without_momentum_outputs_the_message_names_what_the_term_needs():
    with pytest.raises(KeyError, match="the mqmc term needs the momentum encoder and batches with category labels"):
        QCDLoss({"caption": 0.0, "mqmc": 1.0}, setting=TermSetting(dim=4, categories=2))(outputs())


def test_training_on_the_term_lowers_it_and_builds_the_momentum_encoder(tiny_data_root, tmp_path):
    values = train_term_alone("mqmc", tiny_data_root, tmp_path, 40, "--model.momentum", "0.9")
    assert mean(values[-10:]) < 0.8 * mean(values[:10]), values
    state = torch.load(tmp_path / "checkpoints" / "last.pth.tar", weights_only=True, map_location="cpu")
    assert any(key.startswith("momentum_encoder.") for key in state["model"])
    assert state["criterion"]["term_states.mqmc.filled"].sum() > 0
