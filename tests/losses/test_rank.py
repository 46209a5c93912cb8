"""The margin ranking term against a hand calculation: the hardest negative of each row in both
directions, the margin, the positive's column on a gathered batch; and a short training run that
lowers the ``rank`` term."""
import math

import pytest
import torch

from real20m.losses import QCDLoss
from real20m.losses.rank import RANK_MARGIN, hardest_negative_hinge
from real20m.losses.terms import TERMS, TermInputs

from .comparison_training import mean, train_term_alone


def angle(degrees):
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


# Unit vectors in the plane: the cosine of two is the cosine of their angle difference.
QUERIES = torch.tensor([angle(0), angle(90), angle(180)], dtype=torch.float64)
ITEMS = torch.tensor([angle(30), angle(100), angle(60)], dtype=torch.float64)


def cos(degrees):
    return math.cos(math.radians(degrees))


def test_each_query_is_held_against_its_most_similar_other_item():
    # query 0 (0 deg): positive 30 deg away; of the items at 100 and 60 deg the hardest is 60 deg away;
    # query 1 (90 deg): positive 10 deg away; of 30 and 60 deg the hardest is 30 deg away;
    # query 2 (180 deg): positive 120 deg away; of 30 and 100 deg the hardest is 80 deg away.
    hinges = [max(0.0, 0.2 - cos(30) + cos(60)), max(0.0, 0.2 - cos(10) + cos(30)),
              max(0.0, 0.2 - cos(120) + cos(80))]
    # Query 0 meets the margin, query 1 ranks right but within the margin, query 2 ranks wrong.
    assert hinges[0] == 0 and 0 < hinges[1] < 0.2 < hinges[2]
    assert hardest_negative_hinge(QUERIES, ITEMS, 0, 0.2).item() == pytest.approx(sum(hinges) / 3, rel=1e-12)


def test_the_margin_shifts_every_violated_hinge():
    wide = hardest_negative_hinge(QUERIES, ITEMS, 0, 2.0).item()
    none = hardest_negative_hinge(QUERIES, ITEMS, 0, 0.0).item()
    # Margin 2 violates all three rows; margin 0 only row 2, whose hardest negative beats its positive.
    assert wide == pytest.approx(2.0 + (-cos(30) + cos(60) - cos(10) + cos(30) - cos(120) + cos(80)) / 3, rel=1e-12)
    assert none == pytest.approx((cos(80) - cos(120)) / 3, rel=1e-12)


def test_the_positive_is_at_the_offset_of_the_local_rows_in_the_gathered_batch():
    # Local rows are gathered rows 1..2: their positives are items 1 and 2, item 0 a negative.
    expected = (max(0.0, 0.2 - cos(10) + cos(30)) + max(0.0, 0.2 - cos(120) + cos(80))) / 2
    assert hardest_negative_hinge(QUERIES[1:], ITEMS, 1, 0.2).item() == pytest.approx(expected, rel=1e-12)


def test_the_term_sums_query_to_item_and_item_to_query():
    # items -> queries: item 0 (30 deg): positive 30 deg away, the hardest of 90 / 180 deg is 60 deg away;
    # item 1 (100 deg): 10 deg, hardest 80 deg; item 2 (60 deg): 120 deg, hardest 30 deg.
    item_hinges = [max(0.0, RANK_MARGIN - cos(30) + cos(60)), max(0.0, RANK_MARGIN - cos(10) + cos(80)),
                   max(0.0, RANK_MARGIN - cos(120) + cos(30))]
    query_hinges = [max(0.0, RANK_MARGIN - cos(30) + cos(60)), max(0.0, RANK_MARGIN - cos(10) + cos(30)),
                    max(0.0, RANK_MARGIN - cos(120) + cos(80))]
    expected = sum(query_hinges) / 3 + sum(item_hinges) / 3
    local = {"query": QUERIES, "fused": ITEMS}
    inputs = TermInputs(local=local, gathered=local, scale=torch.tensor(20.0), memory=None, outputs=local, offset=0)
    assert TERMS["rank"].compute(inputs).item() == pytest.approx(expected, rel=1e-12)
    out = {"query": QUERIES.float(), "fused": ITEMS.float(), "title": ITEMS.float(), "visual": ITEMS.float()}
    _, terms = QCDLoss({"caption": 0.0, "rank": 1.0})(out)
    assert terms["rank"] == pytest.approx(expected, rel=1e-6)


def test_training_on_the_term_lowers_it(tiny_data_root, tmp_path):
    values = train_term_alone("rank", tiny_data_root, tmp_path, 40)
    assert mean(values[-10:]) < 0.8 * mean(values[:10]), values
