"""Embed every item of an evaluation dataset and write its features in bounded partitions.

Each rank embeds a contiguous, disjoint slice of the dataset, with no padding
(DistributedSampler would repeat items to even out the ranks, and a repeated
gallery item changes Recall@K). Rank 0 then checks that the shards together
hold every pid of the dataset exactly once.

A rank embeds its slice ``partition_size`` items at a time and hands each partition to
``feature_partitions`` (which writes it, records it in the rank's progress file, and on a rerun
says where to continue), then frees the rows: a rank never holds more than one partition and one
batch. Batches never straddle two partitions, so a partition's rows do not depend on where a run
started (with ``partition_size`` a multiple of ``batch_size`` the batches are those of one
unpartitioned pass). A rerun reuses earlier partitions only of the same extraction: the dataset
size and a checksum of the slice's pids, world size, rank slice, partition size, dtype, a
fingerprint of the model weights, the autocast dtype, the decoder and the caller's ``resume_key``.
The embedding itself is ``encoder.Encoder``'s, shared with validation and ``Retriever``.
"""

import collections
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from real20m.evaluate.encoder import Encoder
from real20m.evaluate.feature_folder import check_dtype
from real20m.evaluate.feature_partitions import RankPartitions, finish_folder, partition_bounds, start_folder
from real20m.utils.distributed import barrier
from real20m.utils.workers import worker_init_for

logger = logging.getLogger(__name__)

DEFAULT_PARTITION_SIZE = 65536   # 128 MiB of float32 features at D = 512


@dataclass(frozen=True)
class ExtractionSettings:
    """How the items are loaded and written (how they are embedded is the ``Encoder``'s).
    ``resume_key``: anything JSON-serialisable that must also be equal for a rerun to reuse
    earlier partitions (e.g. the checkpoint and the input settings)."""

    batch_size: int
    workers: int = 0
    dtype: str = "float32"
    partition_size: int = DEFAULT_PARTITION_SIZE
    resume_key: Any = None

    def __post_init__(self):
        check_dtype(self.dtype)
        size = self.partition_size
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"partition_size must be a positive integer, got {size!r}")
        object.__setattr__(self, "partition_size", int(size))   # a numpy integer would not serialise


def rank_slice(num_items, rank, world_size):
    """The contiguous block of item indices this rank embeds (blocks differ in size by at most one)."""
    return range(num_items * rank // world_size, num_items * (rank + 1) // world_size)


class PartitionBatches:
    """Batch sampler over dataset indices: partitions ``first`` onwards of a rank slice, batch by batch,
    each partition cut into its own batches (the last one of a partition may be short)."""

    def __init__(self, indices, partition_size, batch_size, first=0):
        self.indices, self.batch_size = indices, batch_size
        self.bounds = partition_bounds(len(indices), partition_size)[first:]

    def __iter__(self):
        for lo, hi in self.bounds:
            for start in range(lo, hi, self.batch_size):
                yield list(self.indices[start:min(start + self.batch_size, hi)])

    def __len__(self):
        return sum(math.ceil((hi - lo) / self.batch_size) for lo, hi in self.bounds)


def model_fingerprint(model):
    """A digest of the model's weights (names, shapes, dtypes and rounded sums), to tell checkpoints apart."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            values = tensor.detach().double()
            sums = torch.stack([values.sum(), values.square().sum()]).cpu().tolist() if values.numel() else [0.0, 0.0]
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|{sums[0]:.9e}|{sums[1]:.9e};".encode())
    return digest.hexdigest()


def describe_extraction(encoder: Encoder, dataset, dist_env, settings):
    """What a rank's partitions are the output of; a restart reuses them only if this is unchanged."""
    indices = rank_slice(len(dataset), dist_env.rank, dist_env.world_size)
    pids = np.ascontiguousarray(np.asarray(dataset.pids, dtype=np.int64)[indices.start:indices.stop])
    description = {"num_items": len(dataset), "pids_sha256": hashlib.sha256(pids.tobytes()).hexdigest(),
                   "world_size": dist_env.world_size, "rank": dist_env.rank,
                   "start": indices.start, "stop": indices.stop, "partition_size": settings.partition_size,
                   "dtype": settings.dtype, "model": model_fingerprint(encoder.model),
                   "amp_dtype": None if encoder.amp_dtype is None else str(encoder.amp_dtype),
                   "decoder": None if encoder.decoder is None else type(encoder.decoder).__name__,
                   "resume_key": settings.resume_key}
    return json.loads(json.dumps(description))   # as it reads back from the progress file


def extract_features(encoder: Encoder, dataset, collate_fn, dist_env, out_dir, settings: ExtractionSettings):
    """Embed this rank's slice of ``dataset`` with ``encoder`` and write
    ``out_dir/{ids,feats}_rank<r>_part<p>.npy`` + ``progress_rank<r>.json`` + meta.json; returns
    the number of items embedded.

    ``settings.partition_size`` items at most are held and written at a time; a rerun into the same
    folder continues an interrupted extraction (see the module docstring). The count is verified on
    rank 0 (every pid of ``dataset.pids`` exactly once); other ranks return the dataset size without
    waiting for that check.
    """
    os.makedirs(out_dir, exist_ok=True)
    if dist_env.is_main:
        start_folder(out_dir, dist_env.world_size)
    indices = rank_slice(len(dataset), dist_env.rank, dist_env.world_size)
    expected_pids = np.asarray(dataset.pids, dtype=np.int64)[indices.start:indices.stop]
    extraction = describe_extraction(encoder, dataset, dist_env, settings)
    partitions = RankPartitions(out_dir, dist_env.rank, extraction, expected_pids)
    sampler = PartitionBatches(indices, settings.partition_size, settings.batch_size, partitions.completed)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=settings.workers if len(sampler) else 0,
                        collate_fn=collate_fn, pin_memory=dist_env.device.type == "cuda",
                        worker_init_fn=worker_init_for(dist_env.device))
    # closed before an error propagates, so the error line is the last thing printed
    batches = encoder.item_batches(loader)
    with tqdm(total=len(indices), initial=partitions.items_done, desc="extract features", unit="item",
              disable=None if dist_env.is_main else True) as bar:
        _write_partitions(batches, partitions, expected_pids, indices.start, bar)
    issues = partitions.issue_totals()
    if issues:
        logger.warning("rank %d: data issues while embedding: %s", dist_env.rank, issues)
    barrier()
    if not dist_env.is_main:
        return len(dataset)
    return finish_folder(out_dir, dist_env.world_size, dataset.pids)


def _write_partitions(batches, partitions, expected_pids, first_index, bar):
    """Gather the embedded batches of each remaining partition in one buffer, reused by every
    partition, and write each partition once it is full."""
    bounds, rank = partitions.bounds, partitions.rank
    capacity = bounds[0][1] - bounds[0][0] if bounds else 0   # the first partition is a full one
    filled, issues = 0, collections.Counter()
    ids = feats = None
    for batch_ids, batch_feats, batch_issues in batches:
        part = partitions.completed
        lo, hi = bounds[part]
        if feats is None:
            ids = np.empty(capacity, np.int64)
            feats = np.empty((capacity, batch_feats.shape[1]), partitions.dtype)
        ids[filled:filled + len(batch_ids)] = batch_ids
        feats[filled:filled + len(batch_ids)] = batch_feats
        filled += len(batch_ids)
        issues.update(batch_issues)
        bar.update(len(batch_ids))
        if filled == hi - lo:
            if not np.array_equal(ids[:filled], expected_pids[lo:hi]):
                raise RuntimeError(f"rank {rank}: the batches of partition {part} hold other pids than "
                                   f"dataset.pids[{first_index + lo}:{first_index + hi}]")
            partitions.write(ids[:filled], feats[:filled], issues)
            filled, issues = 0, collections.Counter()
    if partitions.completed != len(bounds):
        raise RuntimeError(f"rank {rank}: the loader ended after partition {partitions.completed} of {len(bounds)}")
