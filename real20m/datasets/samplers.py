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

The plan is a list of global batches (batch ``g`` is rank ``g % W``'s batch of step ``g // W``), so
the rest of an epoch started on W ranks can be dealt to W' ranks (a resume on another number of
processes): ``reshard`` walks the remaining batches in order, pools each bucket's samples and cuts
steps of W' batches of the resumed run's batch size from the pools. Every remaining sample comes
once, with the seed it had in the original plan; of a bucket's last samples, those that cannot be
split evenly over W' ranks (the gathered batch needs equal shapes) are skipped and counted.

The yielded dataset keys are ``SampleKey(row, source, member, seed)``: the annotation row, the
source index (0 goods, 1 photo), the member of that row's id list (0 for item files) and a
per-sample seed that makes frame choice, text augmentation and crops reproducible whatever the
worker count.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from .annotations import load_clusters


class SampleKey(NamedTuple):
    row: int
    source: int
    member: int
    seed: int


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's batches for ``world_size`` ranks, step-major: ``order[batch_starts[g]:batch_ends[g]]``
    are the rows of global batch g. ``seeds`` holds each position's sample seed; None: drawn per
    batch from (seed, epoch, g) when it is read (an epoch of a large dataset is never materialised)."""
    world_size: int
    sources: np.ndarray
    members: np.ndarray
    labels: np.ndarray
    order: np.ndarray
    batch_starts: np.ndarray
    batch_ends: np.ndarray
    seed_key: tuple[int, int]
    seeds: np.ndarray | None = None
    skipped: int = 0  # samples of a re-dealt rest that could not be split evenly over the ranks

    @property
    def num_steps(self) -> int:
        return len(self.batch_starts) // self.world_size

    def rows_and_seeds(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        begin, end = self.batch_starts[index], self.batch_ends[index]
        if self.seeds is not None:
            return self.order[begin:end], self.seeds[begin:end]
        seeds = np.random.default_rng([*self.seed_key, int(index)]).integers(0, 2**62, size=end - begin)
        return self.order[begin:end], seeds

    def batch(self, index: int) -> list[SampleKey]:
        rows, seeds = self.rows_and_seeds(index)
        return [SampleKey(int(row), int(self.sources[row]), int(self.members[row]), int(seed))
                for row, seed in zip(rows, seeds)]


def reshard(plan: EpochPlan, done_steps: int, world_size: int, batch_size: int) -> EpochPlan:
    """The batches of ``plan`` after its first ``done_steps`` steps, dealt to ``world_size`` ranks in
    steps of ``batch_size`` per rank, each step of one bucket (see the module notes)."""
    pools: dict[int, list] = defaultdict(lambda: [[], []])
    steps: list[tuple[np.ndarray, np.ndarray, int]] = []
    for index in range(done_steps * plan.world_size, len(plan.batch_starts)):
        rows, seeds = plan.rows_and_seeds(index)
        pool = pools[int(plan.labels[rows[0]])]
        pool[0].extend(rows.tolist())
        pool[1].extend(seeds.tolist())
        while len(pool[0]) >= world_size * batch_size:
            cut = world_size * batch_size
            steps.append((np.array(pool[0][:cut]), np.array(pool[1][:cut]), batch_size))
            del pool[0][:cut], pool[1][:cut]
    skipped = 0
    for rows, seeds in pools.values():  # each bucket's last, smaller step, in order of appearance
        per_rank = len(rows) // world_size
        skipped += len(rows) - per_rank * world_size
        if per_rank:
            cut = per_rank * world_size
            steps.append((np.array(rows[:cut]), np.array(seeds[:cut]), per_rank))
    return _plan_of_steps(plan, steps, world_size, skipped)


def _plan_of_steps(plan: EpochPlan, steps: list, world_size: int, skipped: int) -> EpochPlan:
    sizes = np.repeat([size for _, _, size in steps], world_size).astype(np.int64)
    ends = np.cumsum(sizes)
    empty = np.zeros(0, dtype=np.int64)
    order = np.concatenate([rows for rows, _, _ in steps]) if steps else empty
    seeds = np.concatenate([seeds for _, seeds, _ in steps]) if steps else empty
    return replace(plan, world_size=world_size, order=order, batch_starts=ends - sizes, batch_ends=ends,
                   seeds=seeds, skipped=plan.skipped + skipped)


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
        self.reshards: tuple[tuple[int, int], ...] = ()
        self._plan_key = None
        self._plan = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start_batch(self, index: int) -> None:
        """Make the next iteration start at this rank's batch ``index`` (mid-epoch resume)."""
        if index < 0:
            raise ValueError(f"start batch must be >= 0, got {index}")
        self.start_batch = index

    def set_reshards(self, reshards) -> None:
        """How the current epoch got here: ``(world size, steps taken)`` of each earlier part of it
        that ran on another number of ranks (oldest first; empty when it ran on this one throughout).
        The epoch's plan is then the rest of those parts' plan, re-dealt to this sampler's ranks."""
        self.reshards = tuple((int(world), int(steps)) for world, steps in reshards)

    def __len__(self) -> int:
        """Batches per rank in the current plan: the whole epoch, or the re-dealt rest of it
        (a resumed iteration yields ``len - start_batch``)."""
        return self._epoch_plan().num_steps

    @property
    def skipped_samples(self) -> int:
        """Samples of the current epoch that re-dealing its rest to this many ranks left out."""
        return self._epoch_plan().skipped

    def __iter__(self):
        plan = self._epoch_plan()
        start, self.start_batch = self.start_batch, 0
        for step in range(start, plan.num_steps):
            yield plan.batch(step * self.world_size + self.rank)

    def group_labels(self, sources: np.ndarray) -> np.ndarray:
        """Bucket of each sample (sample i is annotation row i); a batch never mixes buckets."""
        return sources.astype(np.int64)

    def _epoch_plan(self) -> EpochPlan:
        key = (self.epoch, self.reshards)
        if self._plan_key != key:
            worlds = [world for world, _ in self.reshards] + [self.world_size]
            plan = self._make_plan(worlds[0])
            for (_, done), world in zip(self.reshards, worlds[1:]):
                plan = reshard(plan, done, world, self.batch_size)
            self._plan, self._plan_key = plan, key
        return self._plan

    def _make_plan(self, world_size: int) -> EpochPlan:
        rng = np.random.default_rng([self.seed, self.epoch])
        sources, members = self.dataset.epoch_samples(rng)
        labels = np.where(sources >= 0, self.group_labels(sources), -1)  # rows without a sample: bucket -1
        order, starts, ends = bucket_batches(labels, self.batch_size, self.drop_last, rng)
        kept = labels[order[starts]] >= 0
        starts, ends = starts[kept], ends[kept]
        steps = group_into_steps(labels[order[starts]], world_size, self.drop_last)
        steps = steps[rng.permutation(len(steps))]
        # A batch is addressed (and seeded) by its position in the shuffled steps, step * W + rank.
        flat = steps.reshape(-1)
        return EpochPlan(world_size, sources, members, labels, order, starts[flat], ends[flat],
                         (self.seed, self.epoch))


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
