"""Embed every item of an evaluation dataset and write its features in bounded partitions.

Each rank embeds a contiguous, disjoint slice of the dataset, with no padding
(DistributedSampler would repeat items to even out the ranks, and a repeated
gallery item changes Recall@K). Rank 0 then checks that the shards together
hold every pid of the dataset exactly once.

Partitions: a rank writes its slice ``partition_size`` items at a time (the last partition
shorter), each a pair ``ids_rank<r>_part<p>.npy`` + ``feats_rank<r>_part<p>.npy`` written
atomically, and frees the rows; a rank never holds more than one partition and one batch.
Batches never straddle two partitions, so a partition's rows do not depend on where a run
started (with ``partition_size`` a multiple of ``batch_size`` the batches are those of one
unpartitioned pass). After each partition the rank rewrites ``progress_rank<r>.json``: what
the extraction is (dataset size and a checksum of the slice's pids, world size, rank slice,
partition size, dtype, a fingerprint of the model weights, the autocast dtype, the decoder
and the caller's ``resume_key``) and the partitions it completed.

Restart: a rank whose progress file describes the same extraction keeps the partitions it
lists whose pair is present, has the listed shape and holds the expected pids, and continues
with the first one missing; anything after it (a partition written but not yet recorded, a
temporary file of a killed write, a pair missing a file) is deleted and redone. A rank whose
progress file describes a different extraction (or is unreadable) starts fresh: it deletes
its earlier partitions and shards (as the one-shard-per-rank version overwrote them) and logs
a warning naming the folder and what differed. Rank 0 removes ``meta.json`` when it starts
(a folder without it is not a finished extraction) and writes it again at the end.
"""

import collections
import contextlib
import glob
import hashlib
import json
import logging
import math
import os
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from real20m.engine.distributed import barrier
from real20m.evaluate.feature_io import (META_FILE, PROGRESS_FORMAT_NAME, SUPPORTED_DTYPES, FeatureFileError,
                                         check_feature_partition, load_shard_folder, partition_paths,
                                         progress_path, write_feature_partition, write_json_atomic,
                                         write_partitioned_meta)
from real20m.utils.workers import worker_init_for

logger = logging.getLogger(__name__)

DEFAULT_PARTITION_SIZE = 65536   # 128 MiB of float32 features at D = 512


class EmbeddingInputError(ValueError):
    """An item the model cannot embed (e.g. a title longer than the text tower's positions)."""


def check_title_lengths(batch, max_positions):
    """Refuse, naming the first such pid, titles with more tokens than the text tower has positions
    (its position lookup would fail with an IndexError deep inside the model)."""
    lengths = batch["title_mask"].sum(dim=1)
    too_long = torch.nonzero(lengths > max_positions).flatten()
    if len(too_long):
        first = int(too_long[0])
        raise EmbeddingInputError(
            f"pid {int(batch['pids'][first])}: its title has {int(lengths[first])} tokens but the text tower has "
            f"{max_positions} positions; lower --max_title_len or use a model with more text positions")


def rank_slice(num_items, rank, world_size):
    """The contiguous block of item indices this rank embeds (blocks differ in size by at most one)."""
    return range(num_items * rank // world_size, num_items * (rank + 1) // world_size)


def partition_bounds(num_rank_items, partition_size):
    """[start, stop) of every partition of a rank's slice, in rank-local positions."""
    return [(lo, min(lo + partition_size, num_rank_items)) for lo in range(0, num_rank_items, partition_size)]


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


@torch.no_grad()
def embed_batches(model, loader, device, amp_dtype=None, decoder=None):
    """(pids int64, L2-normalised float32 features, issue kinds) of each batch, in order."""
    autocast = (torch.autocast("cuda", dtype=amp_dtype) if amp_dtype is not None and device.type == "cuda"
                else contextlib.nullcontext())
    for batch in loader:
        check_title_lengths(batch, model.max_text_tokens)
        pixels = decoder(batch["jpeg"], batch["plans"]) if decoder is not None else \
            batch["pixels"].to(device, non_blocking=True)
        with autocast:
            fused = model.encode_items(batch["title_ids"].to(device, non_blocking=True),
                                       batch["title_mask"].to(device, non_blocking=True), pixels).fused
        yield (batch["pids"].cpu().numpy().astype(np.int64), F.normalize(fused.float(), dim=-1).cpu().numpy(),
               [kind for kind, _ in batch.get("issues", ())])


def model_fingerprint(model):
    """A digest of the model's weights (names, shapes, dtypes and rounded sums), to tell checkpoints apart."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            values = tensor.detach().double()
            sums = torch.stack([values.sum(), values.square().sum()]).cpu().tolist() if values.numel() else [0.0, 0.0]
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|{sums[0]:.9e}|{sums[1]:.9e};".encode())
    return digest.hexdigest()


def describe_extraction(model, dataset, dist_env, partition_size, dtype, amp_dtype, decoder, resume_key):
    """What a rank's partitions are the output of; a restart reuses them only if this is unchanged."""
    indices = rank_slice(len(dataset), dist_env.rank, dist_env.world_size)
    pids = np.ascontiguousarray(np.asarray(dataset.pids, dtype=np.int64)[indices.start:indices.stop])
    description = {"num_items": len(dataset), "pids_sha256": hashlib.sha256(pids.tobytes()).hexdigest(),
                   "world_size": dist_env.world_size, "rank": dist_env.rank,
                   "start": indices.start, "stop": indices.stop, "partition_size": partition_size,
                   "dtype": dtype, "model": model_fingerprint(model),
                   "amp_dtype": None if amp_dtype is None else str(amp_dtype),
                   "decoder": None if decoder is None else type(decoder).__name__,
                   "resume_key": resume_key}
    return json.loads(json.dumps(description))   # as it reads back from the progress file


def _rank_files(out_dir, rank):
    """Every file this package writes for ``rank`` in ``out_dir`` (shards, partitions, progress, temporaries)."""
    pattern = re.compile(rf"^(ids|feats)_rank{rank}(_part\d+)?\.npy(\.tmp\.npy)?$"
                         rf"|^progress_rank{rank}\.json(\.tmp)?$")
    return sorted(path for path in glob.glob(os.path.join(glob.escape(out_dir), f"*rank{rank}*"))
                  if pattern.match(os.path.basename(path)))


def _remove(paths):
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _differences(recorded, wanted):
    keys = sorted(set(recorded) | set(wanted))
    return [f"{key} {recorded.get(key)!r} -> {wanted.get(key)!r}"
            for key in keys if recorded.get(key) != wanted.get(key)]


def resume_partitions(out_dir, rank, extraction, expected_pids):
    """The progress of ``rank`` to continue from: the complete, intact prefix of the partitions recorded
    for this same extraction; every other file of the rank is deleted. ``expected_pids``: the rank's slice."""
    path = progress_path(out_dir, rank)
    progress = None
    if os.path.exists(path):
        try:
            with open(path) as f:
                progress = json.load(f)
            if (not isinstance(progress, dict) or progress.get("format") != PROGRESS_FORMAT_NAME
                    or not isinstance(progress.get("partitions"), list) or "extraction" not in progress):
                raise ValueError(f"not a {PROGRESS_FORMAT_NAME} file")
        except (OSError, ValueError) as error:
            logger.warning("%s: unreadable progress file (%s); rank %d starts afresh", path, error, rank)
            progress = None
    if progress is not None and progress["extraction"] != extraction:
        logger.warning("%s: rank %d's earlier partitions are of a different extraction (%s); deleting them and "
                       "starting afresh", out_dir, rank, "; ".join(_differences(progress["extraction"], extraction)))
        progress = None
    bounds = partition_bounds(len(expected_pids), extraction["partition_size"])
    kept = []
    for part, entry in enumerate(progress["partitions"] if progress is not None else ()):
        if part >= len(bounds):
            break
        lo, hi = bounds[part]
        ids = check_feature_partition(out_dir, rank, part, hi - lo, progress.get("dim"), extraction["dtype"])
        if (ids is None or not isinstance(entry, dict) or entry.get("count") != hi - lo
                or not np.array_equal(ids, expected_pids[lo:hi])):
            logger.warning("%s: partition %d of rank %d is incomplete or damaged; redoing it and the ones after it",
                           out_dir, part, rank)
            break
        kept.append(entry)
    keep = {name for part in range(len(kept)) for name in partition_paths(out_dir, rank, part)}
    _remove(name for name in _rank_files(out_dir, rank) if name not in keep and name != path)
    resumed = {"format": PROGRESS_FORMAT_NAME, "extraction": extraction, "num_partitions": len(bounds),
               "dim": progress["dim"] if kept else None, "partitions": kept}
    write_json_atomic(path, resumed)
    if kept:
        logger.info("%s: rank %d resumes after %d of %d complete partitions (%d items)", out_dir, rank, len(kept),
                    len(bounds), bounds[len(kept) - 1][1])
    return resumed


def _stale_ranks(out_dir, world_size):
    """Ranks >= world_size with files in ``out_dir`` (from a run with more processes)."""
    ranks = set()
    for path in glob.glob(os.path.join(glob.escape(out_dir), "*rank*")):
        match = re.match(r"^(?:ids|feats|progress)_rank(\d+)", os.path.basename(path))
        if match and int(match.group(1)) >= world_size:
            ranks.add(int(match.group(1)))
    return sorted(ranks)


def verify_shards(out_dir, expected_pids):
    """Every expected pid exactly once across the shards (duplicates are caught while loading)."""
    features = load_shard_folder(out_dir)
    expected = np.sort(np.asarray(expected_pids, dtype=np.int64))
    written = np.sort(features.ids)
    if not np.array_equal(written, expected):
        missing = np.setdiff1d(expected, written)
        extra = np.setdiff1d(written, expected)
        raise FeatureFileError(
            f"{out_dir}: shards hold {len(written)} pids, dataset has {len(expected)}; "
            f"missing {len(missing)} (e.g. {missing[:5].tolist()}), unexpected {len(extra)} (e.g. {extra[:5].tolist()})")
    return len(written)


def extract_features(model, dataset, collate_fn, dist_env, out_dir, batch_size, workers, dtype="float32",
                     amp_dtype=None, decoder=None, partition_size=DEFAULT_PARTITION_SIZE, resume_key=None):
    """Write ``out_dir/{ids,feats}_rank<r>_part<p>.npy`` + ``progress_rank<r>.json`` + meta.json;
    returns the number of items embedded.

    ``partition_size`` items at most are held and written at a time; a rerun into the same folder
    continues an interrupted extraction (see the module docstring). ``resume_key``: anything
    JSON-serialisable that must also be equal for a restart to reuse earlier partitions (e.g. the
    checkpoint and the input settings). The count is verified on rank 0 (every pid of
    ``dataset.pids`` exactly once); other ranks return the dataset size without waiting for that check.
    """
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype!r}")
    if isinstance(partition_size, bool) or not isinstance(partition_size, (int, np.integer)) or partition_size < 1:
        raise ValueError(f"partition_size must be a positive integer, got {partition_size!r}")
    partition_size = int(partition_size)
    model.eval()
    rank = dist_env.rank
    os.makedirs(out_dir, exist_ok=True)
    if dist_env.is_main:
        _remove([os.path.join(out_dir, META_FILE)])
        for stale in _stale_ranks(out_dir, dist_env.world_size):
            _remove(_rank_files(out_dir, stale))
    indices = rank_slice(len(dataset), rank, dist_env.world_size)
    expected_pids = np.asarray(dataset.pids, dtype=np.int64)[indices.start:indices.stop]
    extraction = describe_extraction(model, dataset, dist_env, partition_size, dtype, amp_dtype, decoder, resume_key)
    progress = resume_partitions(out_dir, rank, extraction, expected_pids)
    bounds = partition_bounds(len(indices), partition_size)
    first = len(progress["partitions"])
    sampler = PartitionBatches(indices, partition_size, batch_size, first)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers if len(sampler) else 0,
                        collate_fn=collate_fn, pin_memory=dist_env.device.type == "cuda",
                        worker_init_fn=worker_init_for(dist_env.device))
    done = bounds[first - 1][1] if first else 0
    part, filled, issues = first, 0, collections.Counter()
    ids = feats = None
    # closed before an error propagates, so the error line is the last thing printed
    batches = embed_batches(model, loader, dist_env.device, amp_dtype, decoder)
    with tqdm(total=len(indices), initial=done, desc="extract features", unit="item",
              disable=None if dist_env.is_main else True) as bar:
        for batch_ids, batch_feats, batch_issues in batches:
            size = bounds[part][1] - bounds[part][0]
            if feats is None:   # one buffer, reused by every partition
                ids = np.empty(partition_size if len(bounds) > 1 else size, np.int64)
                feats = np.empty((len(ids), batch_feats.shape[1]), dtype)
            ids[filled:filled + len(batch_ids)] = batch_ids
            feats[filled:filled + len(batch_ids)] = batch_feats
            filled += len(batch_ids)
            issues.update(batch_issues)
            bar.update(len(batch_ids))
            if filled == size:
                lo, hi = bounds[part]
                if not np.array_equal(ids[:size], expected_pids[lo:hi]):
                    raise RuntimeError(f"rank {rank}: the batches of partition {part} hold other pids than "
                                       f"dataset.pids[{indices.start + lo}:{indices.start + hi}]")
                write_feature_partition(out_dir, rank, part, ids[:size], feats[:size], dtype)
                progress["dim"] = int(feats.shape[1])
                progress["partitions"].append({"count": size, "issues": dict(issues)})
                write_json_atomic(progress_path(out_dir, rank), progress)
                part, filled, issues = part + 1, 0, collections.Counter()
    if part != len(bounds):
        raise RuntimeError(f"rank {rank}: the loader ended after partition {part} of {len(bounds)}")
    del ids, feats
    total_issues = collections.Counter()
    for entry in progress["partitions"]:
        total_issues.update(entry.get("issues", {}))
    if total_issues:
        logger.warning("rank %d: data issues while embedding: %s", rank, dict(total_issues))
    barrier()
    if not dist_env.is_main:
        return len(dataset)
    write_partitioned_meta(out_dir, dist_env.world_size)
    return verify_shards(out_dir, dataset.pids)
