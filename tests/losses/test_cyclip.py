"""CyCLIP's two consistency regularisers against a loop over every (j, k) pair, and a short
training run that lowers the ``cyclip`` term."""
import numpy as np
import pytest
import torch

from real20m.losses import QCDLoss
from real20m.losses.cyclip import cross_modal_cyclic, in_modal_cyclic

from .comparison_training import mean, train_term_alone
from .test_qcd_loss import outputs


def unit_rows(seed, count=4, dim=3):
    values = np.random.default_rng(seed).normal(size=(count, dim))
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def pairwise_mean(score):
    count = 4
    return sum(score(j, k) for j in range(count) for k in range(count)) / count ** 2


def test_cross_modal_term_compares_each_mismatched_pair_both_ways():
    q, v = unit_rows(0), unit_rows(1)
    expected = pairwise_mean(lambda j, k: (q[j] @ v[k] - q[k] @ v[j]) ** 2)
    assert cross_modal_cyclic(torch.tensor(q), torch.tensor(v)).item() == pytest.approx(expected, rel=1e-12)
    assert expected > 0.05


def test_in_modal_term_compares_the_query_and_item_geometries():
    q, v = unit_rows(2), unit_rows(3)
    expected = pairwise_mean(lambda j, k: (q[j] @ q[k] - v[j] @ v[k]) ** 2)
    assert in_modal_cyclic(torch.tensor(q), torch.tensor(v)).item() == pytest.approx(expected, rel=1e-12)
    assert expected > 0.05


def test_both_vanish_when_items_are_a_rotation_of_the_queries():
    """A shared rotation keeps every inner product, and <q_j, v_k> = <q_k, v_j> for a symmetric one."""
    q = torch.tensor(unit_rows(4))
    reflection = torch.eye(3) - 2 * torch.outer(torch.tensor([1.0, 2.0, 2.0]), torch.tensor([1.0, 2.0, 2.0])) / 9
    v = q @ reflection.double()
    assert in_modal_cyclic(q, v).item() == pytest.approx(0, abs=1e-12)
    assert cross_modal_cyclic(q, v).item() == pytest.approx(0, abs=1e-12)


def test_the_term_is_the_sum_of_both_on_query_and_fused_with_its_weight():
    out = outputs()
    query, fused = out["query"].double(), out["fused"].double()
    expected = (cross_modal_cyclic(query, fused) + in_modal_cyclic(query, fused)).item()
    without_total, _ = QCDLoss({"caption": 0.0})(outputs())
    total, terms = QCDLoss({"caption": 0.0, "cyclip": 0.25})(outputs())
    assert terms["cyclip"] == pytest.approx(expected, rel=1e-5)
    assert total.item() == pytest.approx(without_total.item() + 0.25 * expected, rel=1e-6)


def test_training_on_the_term_lowers_it(tiny_data_root, tmp_path):
    values = train_term_alone("cyclip", tiny_data_root, tmp_path, 40)
    assert mean(values[-10:]) < 0.1 * mean(values[:10]), values
