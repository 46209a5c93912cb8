import numpy as np
import pytest
import torch

from real20m.datasets.annotations import load_items, load_query_groups
from real20m.datasets.dataset import TrainDataset
from real20m.datasets.samplers import ClusterBatchSampler, SourceBatchSampler, group_into_steps
from tests.utils.process_group import run_in_processes

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


def without_seeds(batch):
    return tuple((key.row, key.source, key.member) for key in batch)


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_rank_shards_are_disjoint_equal_and_cut_from_the_same_batches(dataset, world_size):
    reference = {without_seeds(batch) for batch in epoch_batches(SourceBatchSampler(dataset, 4, seed=5), epoch=1)}
    shards = [epoch_batches(SourceBatchSampler(dataset, 4, rank, world_size, seed=5), epoch=1)
              for rank in range(world_size)]
    assert len({len(shard) for shard in shards}) == 1
    assert len(shards[0]) == len(SourceBatchSampler(dataset, 4, 0, world_size, 5)) > 0
    seen = [without_seeds(batch) for shard in shards for batch in shard]
    assert len(seen) == len(set(seen)) and set(seen) <= reference
    for step in zip(*shards):  # the batches all ranks train on at one step: one source
        assert len({key.source for batch in step for key in batch}) == 1


def test_steps_group_batches_of_one_bucket():
    buckets = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    assert group_into_steps(buckets, 2, drop_last=True).tolist() == [[0, 1], [3, 4], [5, 6], [7, 8]]
    assert group_into_steps(buckets, 2, drop_last=False).tolist() == [[0, 1], [2, 0], [3, 4], [5, 6], [7, 8],
                                                                     [9, 5]]
    assert group_into_steps(buckets, 1, drop_last=True).tolist() == [[index] for index in range(10)]


def _gathered_batches_worker(env, cluster_file, train_file, out_dir):
    from real20m.datasets import TrainDataset, load_query_groups
    dataset = TrainDataset(load_query_groups(train_file), loader=None, cluster_file=cluster_file)
    for sampler in (SourceBatchSampler(dataset, 3, env.rank, env.world_size, seed=4),
                    ClusterBatchSampler(dataset, 3, env.rank, env.world_size, seed=4)):
        clusters = getattr(sampler, "row_clusters", np.zeros(len(dataset), dtype=np.int64))
        mixed = steps = 0
        for epoch in range(6):
            sampler.set_epoch(epoch)
            for batch in sampler:
                everyone = [None] * env.world_size
                torch.distributed.all_gather_object(everyone, [(key.source, int(clusters[key.row])) for key in batch])
                mixed += len({bucket for rank_buckets in everyone for bucket in rank_buckets}) != 1
                steps += 1
        torch.save(torch.tensor([mixed, steps]), f"{out_dir}/{type(sampler).__name__}_{env.rank}.pt")


def test_two_gloo_ranks_train_on_homogeneous_gathered_batches(dataset, tmp_path):
    """Every step, the batches of both ranks (the gathered batch) hold one source and one cluster."""
    run_in_processes(_gathered_batches_worker, 2, dataset.cluster_file, dataset.table.path, str(tmp_path))
    for name in ("SourceBatchSampler", "ClusterBatchSampler"):
        mixed, steps = zip(*(torch.load(tmp_path / f"{name}_{rank}.pt").tolist() for rank in range(2)))
        assert mixed == (0, 0) and steps[0] == steps[1] >= 12, (name, mixed, steps)


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


def rank_batches(dataset, world_size, epoch, reshards=(), start=0, batch_size=4):
    """Every rank's batches of one epoch (as SampleKeys), step by step: [step][rank]."""
    shards = []
    for rank in range(world_size):
        sampler = SourceBatchSampler(dataset, batch_size, rank, world_size, seed=6)
        sampler.set_epoch(epoch)
        sampler.set_reshards(reshards)
        sampler.set_start_batch(start)
        shards.append(list(sampler))
    return [list(step) for step in zip(*shards)]


def samples_of(steps):
    return [key for step in steps for batch in step for key in batch]


@pytest.mark.parametrize("old, new", [(2, 1), (1, 2), (4, 2), (2, 4), (2, 3)])
def test_the_rest_of_an_epoch_resumed_on_another_world_size_has_every_sample_once(dataset, old, new):
    done = 3
    planned = samples_of(rank_batches(dataset, old, epoch=1))
    before = samples_of(rank_batches(dataset, old, epoch=1)[:done])
    after_steps = rank_batches(dataset, new, epoch=1, reshards=[(old, done)])
    after = samples_of(after_steps)
    seen = before + after  # (row, source, member, seed): the same sample, drawn the same way
    assert len(seen) == len(set(seen)) and set(seen) <= set(planned)
    sampler = SourceBatchSampler(dataset, 4, 0, new, seed=6)
    sampler.set_epoch(1)
    sampler.set_reshards([(old, done)])
    assert len(planned) - len(seen) == sampler.skipped_samples
    if new <= 2 or new % old == 0:  # batches of 4 split evenly over 1, 2 or 4 ranks
        assert sampler.skipped_samples == 0
    for step in after_steps:  # the gathered batch: one source, equal shapes
        assert len({key.source for batch in step for key in batch}) == 1
        assert len({len(batch) for batch in step}) == 1


def test_a_resharded_epoch_resumes_mid_way_and_chains(dataset):
    """2 ranks for 2 steps, 1 rank for 5 more, then 2 ranks again: still every sample once."""
    planned = samples_of(rank_batches(dataset, 2, epoch=0))
    first = rank_batches(dataset, 2, epoch=0)[:2]
    middle = rank_batches(dataset, 1, epoch=0, reshards=[(2, 2)])
    assert rank_batches(dataset, 1, epoch=0, reshards=[(2, 2)], start=5) == middle[5:]
    last = rank_batches(dataset, 2, epoch=0, reshards=[(2, 2), (1, 5)])
    seen = samples_of(first) + samples_of(middle[:5]) + samples_of(last)
    assert sorted(seen) == sorted(planned)
