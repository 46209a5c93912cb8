import numpy as np
import pytest

from real20m.datasets.annotations import load_items, load_query_groups
from real20m.datasets.dataset import TrainDataset
from real20m.datasets.samplers import ClusterBatchSampler, SourceBatchSampler, deal_batches

N_QUERIES = 103


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(1)
    lines = []
    for i in range(N_QUERIES):
        kind = i % 3  # goods only, videos only, both
        goods = ",".join(str(50000 + j) for j in rng.integers(0, 999, size=rng.integers(1, 4))) if kind != 1 else "None"
        videos = ",".join(str(10**6 + j) for j in rng.integers(0, 999, size=rng.integers(1, 4))) if kind != 0 else "None"
        lines.append(f"query {i}\t{goods}\t{videos}")
    path = tmp_path / "train.txt"
    path.write_text("\n".join(lines) + "\n")
    (tmp_path / "cluster.txt").write_text("".join(f"query {i}\tc{i % 4}\tx\ty\n" for i in range(N_QUERIES - 3)))
    return TrainDataset(load_query_groups(str(path)), loader=None, cluster_file=str(tmp_path / "cluster.txt"))


def epoch_batches(sampler, epoch=0):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_batches_are_one_source_and_valid_members(dataset):
    batches = epoch_batches(SourceBatchSampler(dataset, batch_size=4, seed=0))
    assert batches and all(len(batch) == 4 for batch in batches)
    for batch in batches:
        assert len({key.source for key in batch}) == 1
        for key in batch:
            assert 0 <= key.member < dataset.table.member_counts_at(key.row, key.source)


def test_every_query_once_per_epoch(dataset):
    full = epoch_batches(SourceBatchSampler(dataset, batch_size=4, seed=3, drop_last=False))
    rows = sorted(key.row for batch in full for key in batch)
    assert rows == list(range(N_QUERIES))
    dropped = epoch_batches(SourceBatchSampler(dataset, batch_size=4, seed=3))
    kept = [key.row for batch in dropped for key in batch]
    assert len(kept) == len(set(kept)) and N_QUERIES - 2 * 3 <= len(kept) <= N_QUERIES


def test_deterministic_per_seed_and_epoch(dataset):
    one = epoch_batches(SourceBatchSampler(dataset, 4, seed=7), epoch=2)
    two = epoch_batches(SourceBatchSampler(dataset, 4, seed=7), epoch=2)
    assert one == two
    assert one != epoch_batches(SourceBatchSampler(dataset, 4, seed=7), epoch=3)
    assert one != epoch_batches(SourceBatchSampler(dataset, 4, seed=8), epoch=2)


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_rank_shards_disjoint_equal_and_world_size_independent(dataset, world_size):
    reference = {tuple(batch) for batch in epoch_batches(SourceBatchSampler(dataset, 4, seed=5), epoch=1)}
    shards = [epoch_batches(SourceBatchSampler(dataset, 4, rank, world_size, seed=5), epoch=1)
              for rank in range(world_size)]
    assert len({len(shard) for shard in shards}) == 1
    assert len(shards[0]) == len(reference) // world_size == len(SourceBatchSampler(dataset, 4, 0, world_size, 5))
    seen = [tuple(batch) for shard in shards for batch in shard]
    assert len(seen) == len(set(seen)) and set(seen) <= reference


def test_deal_batches_without_drop_last_wraps_around():
    assert deal_batches(5, 1, 2, drop_last=True).tolist() == [1, 3]
    assert deal_batches(5, 0, 2, drop_last=False).tolist() == [0, 2, 4]
    assert deal_batches(5, 1, 2, drop_last=False).tolist() == [1, 3, 0]


def test_set_start_batch_resumes_mid_epoch(dataset):
    sampler = SourceBatchSampler(dataset, 4, seed=2)
    full = epoch_batches(sampler)
    sampler.set_start_batch(5)
    assert list(sampler) == full[5:]
    assert list(sampler) == full  # only the next iteration is shortened
    with pytest.raises(ValueError):
        sampler.set_start_batch(-1)


def test_cluster_batches_stay_within_one_cluster_and_source(dataset):
    sampler = ClusterBatchSampler(dataset, batch_size=3, seed=0)
    batches = epoch_batches(sampler)
    assert len(batches) >= 4
    for batch in batches:
        assert len({key.source for key in batch}) == 1
        assert len({int(sampler.row_clusters[key.row]) for key in batch}) == 1
    assert sampler.row_clusters[-3:].tolist() == [-1, -1, -1]  # not in cluster.txt


def test_item_file_every_line_is_one_sample(tmp_path):
    lines = [f"{i}\t{'goods' if i % 2 else 'photo'}\tq{i}\tNone\tNone" for i in range(20)]
    (tmp_path / "items.txt").write_text("\n".join(lines) + "\n")
    dataset = TrainDataset(load_items(str(tmp_path / "items.txt")), loader=None)
    batches = epoch_batches(SourceBatchSampler(dataset, 5, seed=0))
    assert sorted(key.row for batch in batches for key in batch) == list(range(20))
    for batch in batches:
        assert {key.row % 2 for key in batch} in ({0}, {1}) and {key.member for key in batch} == {0}
