import pytest
import torch

from real20m.losses.memory_bank import CrossBatchMemory
from real20m.utils.checkpoint_io import load_checkpoint, save_checkpoint


def rows(*values):
    """(N, 2) rows [v, -v]: easy to read back which row landed where."""
    return torch.tensor([[float(v), -float(v)] for v in values])


def test_fills_in_order_then_wraps_over_the_oldest_rows():
    memory = CrossBatchMemory(size=4, dim=2)
    assert memory.negatives()[0].shape == (0, 2)
    memory.enqueue(rows(0, 1, 2), rows(10, 11, 12))
    queries, items = memory.negatives()
    assert torch.equal(queries, rows(0, 1, 2)) and torch.equal(items, rows(10, 11, 12))

    memory.enqueue(rows(3, 4, 5), rows(13, 14, 15))
    queries, items = memory.negatives()
    assert torch.equal(queries, rows(4, 5, 2, 3))  # 4 and 5 overwrote the oldest slots 0 and 1
    assert torch.equal(items, rows(14, 15, 12, 13))
    assert int(memory.ptr) == 2 and int(memory.filled) == 4


def test_a_batch_larger_than_the_ring_keeps_its_newest_rows():
    memory = CrossBatchMemory(size=3, dim=2)
    memory.enqueue(rows(0, 1, 2, 3, 4), rows(0, 1, 2, 3, 4))
    assert sorted(memory.negatives()[0][:, 0].tolist()) == [2.0, 3.0, 4.0]


def test_state_survives_a_checkpoint_round_trip_exactly(tmp_path):
    memory = CrossBatchMemory(size=4, dim=2)
    memory.enqueue(rows(0, 1, 2, 3, 4), rows(5, 6, 7, 8, 9))
    save_checkpoint({"memory": memory.state_dict()}, tmp_path / "xbm.pth.tar")

    restored = CrossBatchMemory(size=4, dim=2)
    restored.load_state_dict(load_checkpoint(tmp_path / "xbm.pth.tar")["memory"])
    for name, buffer in memory.state_dict().items():
        assert torch.equal(restored.state_dict()[name], buffer), name
    memory.enqueue(rows(7), rows(8))
    restored.enqueue(rows(7), rows(8))
    assert torch.equal(memory.negatives()[0], restored.negatives()[0])


def test_enqueued_rows_are_detached_and_shapes_checked():
    memory = CrossBatchMemory(size=4, dim=2)
    source = rows(1, 2).requires_grad_(True)
    memory.enqueue(source * 2, source * 3)
    assert not memory.negatives()[0].requires_grad
    with pytest.raises(ValueError, match="enqueue expects"):
        memory.enqueue(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="size > 0"):
        CrossBatchMemory(size=0, dim=2)
