"""Batch samplers: every batch holds one source only (all goods or all videos), and so does
every step's global batch across ranks (the negatives gathered from all ranks).

One epoch, for a given (seed, epoch):
  1. the dataset draws its samples (``TrainDataset.epoch_samples``): with the query-grouped file
     every query gives ONE sample (source drawn when it has both goods and videos, then a random
     member of that list); with the item file every line is one sample;
  2. samples are bucketed (by source; by source and query cluster for ``ClusterBatchSampler``),
     shuffled, and each bucket is cut into batches of ``batch_size`` (remainder dropped when
     ``drop_last``, else kept as a smaller batch);
  3. each bucket's batches are grouped into steps of W (world size) consecutive batches, so the
     W batches of one step share a bucket; a bucket's leftover batches are dropped
     (``drop_last``) or its first batches are dealt again to fill its last step;
  4. the step order is shuffled, and rank r takes batch r of every step.
With one rank a step is one batch, so the plan is that of a plain shuffled batch list.

The yielded dataset keys are ``SampleKey(row, source, member, seed)``: the annotation row, the
source index (0 goods, 1 photo), the member of that row's id list (0 for item files) and a
per-sample seed that makes frame choice, text augmentation and crops reproducible whatever the
worker count.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .annotations import load_clusters


class SampleKey(NamedTuple):
    row: int
    source: int
    member: int
    seed: int


class SourceBatchSampler:
    def __init__(self, dataset, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 drop_last: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0
        self._plan_epoch = None
        self._plan = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start_batch(self, index: int) -> None:
        """Make the next iteration start at this rank's batch ``index`` (mid-epoch resume)."""
        if index < 0:
            raise ValueError(f"start batch must be >= 0, got {index}")
        self.start_batch = index

    def __len__(self) -> int:
        """Batches per rank in the whole epoch (a resumed iteration yields ``len - start_batch``)."""
        return len(self._epoch_plan()["rank_batches"])

    def __iter__(self):
        plan = self._epoch_plan()
        start, self.start_batch = self.start_batch, 0
        for global_index in plan["rank_batches"][start:]:
            begin, end = plan["batch_starts"][global_index], plan["batch_ends"][global_index]
            samples = plan["order"][begin:end]
            seeds = np.random.default_rng([self.seed, self.epoch, int(global_index)]).integers(
                0, 2**62, size=len(samples))
            yield [SampleKey(int(row), int(plan["sources"][row]), int(plan["members"][row]), int(seed))
                   for row, seed in zip(samples, seeds)]

    def group_labels(self, sources: np.ndarray) -> np.ndarray:
        """Bucket of each sample (sample i is annotation row i); a batch never mixes buckets."""
        return sources.astype(np.int64)

    def _epoch_plan(self) -> dict:
        if self._plan_epoch != self.epoch:
            self._plan = self._make_plan()
            self._plan_epoch = self.epoch
        return self._plan

    def _make_plan(self) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch])
        sources, members = self.dataset.epoch_samples(rng)
        labels = np.where(sources >= 0, self.group_labels(sources), -1)  # rows without a sample: bucket -1
        order, starts, ends = bucket_batches(labels, self.batch_size, self.drop_last, rng)
        kept = labels[order[starts]] >= 0
        starts, ends = starts[kept], ends[kept]
        steps = group_into_steps(labels[order[starts]], self.world_size, self.drop_last)
        steps = steps[rng.permutation(len(steps))]
        # A batch is addressed (and seeded) by its position in the shuffled steps, step * W + rank.
        flat = steps.reshape(-1)
        return {
            "sources": sources, "members": members, "order": order,
            "batch_starts": starts[flat], "batch_ends": ends[flat],
            "rank_batches": np.arange(len(steps), dtype=np.int64) * self.world_size + self.rank,
        }


class ClusterBatchSampler(SourceBatchSampler):
    """Hard-sample batches: every batch within one query cluster of ``cluster.txt`` and one source.

    Queries missing from the cluster file share one extra "unclustered" bucket per source."""

    def __init__(self, dataset, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 drop_last: bool = True, cluster_file: str | None = None, level: int = 0):
        super().__init__(dataset, batch_size, rank, world_size, seed, drop_last)
        cluster_file = cluster_file or getattr(dataset, "cluster_file", None)
        if not cluster_file:
            raise ValueError("ClusterBatchSampler needs a cluster file (cfg.cluster_file)")
        if level not in (0, 1, 2):
            raise ValueError(f"cluster level must be 0, 1 or 2, got {level}")
        self.row_clusters = load_clusters(cluster_file).labels_for(dataset.row_queries(), level)

    def group_labels(self, sources: np.ndarray) -> np.ndarray:
        clusters = self.row_clusters + 1  # -1 (unclustered) -> 0
        return clusters * 3 + sources  # sources: goods, photo, or a goods-video pair


def bucket_batches(labels: np.ndarray, batch_size: int, drop_last: bool, rng: np.random.Generator):
    """Shuffle samples within buckets and cut each bucket into batches.

    Returns (order, batch_starts, batch_ends): ``order[batch_starts[b]:batch_ends[b]]`` are the
    sample indices of batch b; batches are listed bucket by bucket."""
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]  # bucket-contiguous, random inside
    sorted_labels = labels[order]
    bucket_starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]]) if len(order) else \
        np.zeros(0, dtype=np.int64)
    bucket_ends = np.r_[bucket_starts[1:], len(order)]
    starts, ends = [], []
    for begin, end in zip(bucket_starts, bucket_ends):
        last = end if not drop_last else begin + (end - begin) // batch_size * batch_size
        batch_begins = np.arange(begin, last, batch_size)
        starts.append(batch_begins)
        ends.append(np.minimum(batch_begins + batch_size, end))
    if not starts:
        return order, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return order, np.concatenate(starts), np.concatenate(ends)


def group_into_steps(batch_buckets: np.ndarray, world_size: int, drop_last: bool) -> np.ndarray:
    """(steps, world_size) batch indices: every row holds batches of one bucket.

    ``batch_buckets`` is the bucket of each batch, the batches of a bucket being contiguous. A
    bucket's batches that cannot fill a last step are dropped (``drop_last``), or its first
    batches are dealt again to fill it."""
    if len(batch_buckets) == 0:
        return np.zeros((0, world_size), dtype=np.int64)
    bounds = np.flatnonzero(np.r_[True, batch_buckets[1:] != batch_buckets[:-1], True])
    steps = []
    for begin, end in zip(bounds[:-1], bounds[1:]):
        count = end - begin
        slots = count // world_size * world_size if drop_last else -(-count // world_size) * world_size
        steps.append(begin + np.arange(slots, dtype=np.int64) % count)
    return np.concatenate(steps).reshape(-1, world_size)
