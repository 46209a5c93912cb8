"""Feature extraction's partitions of a folder, and the progress file that lets a rerun continue.

A rank writes its slice of the items ``partition_size`` at a time (the last partition shorter),
each a pair ``ids_rank<r>_part<p>.npy`` + ``feats_rank<r>_part<p>.npy`` written atomically (feats
first, then ids: a pair with its ids file is whole). After each partition the rank rewrites
``progress_rank<r>.json``: what the extraction is (a description the caller gives: the items, the
model, the settings) and the partitions it completed, with the data issues met in each.

Restart: a rank whose progress file describes the same extraction keeps the partitions it
lists whose pair is present, has the listed shape and holds the expected pids, and continues
with the first one missing; anything after it (a partition written but not yet recorded, a
temporary file of a killed write, a pair missing a file) is deleted and redone. A rank whose
progress file describes a different extraction (or is unreadable) starts fresh: it deletes
its earlier partitions and shards (as the one-shard-per-rank version overwrote them) and logs
a warning naming the folder and what differed. Rank 0 removes ``meta.json`` when it starts
(a folder without it is not a finished extraction) and writes it again at the end, from the
progress files, once every rank is done.
"""
import collections
import contextlib
import glob
import json
import logging
import os
import re

import numpy as np

from real20m.evaluate.feature_folder import (META_FILE, PARTITIONED_FORMAT_NAME, FeatureFileError, feature_rows,
                                             load_shard_folder, partition_paths, read_json, save_npy_atomic,
                                             write_json_atomic)

logger = logging.getLogger(__name__)

PROGRESS_FORMAT_NAME = "real20m-extract-progress-v1"


def partition_bounds(num_rank_items, partition_size):
    """[start, stop) of every partition of a rank's slice, in rank-local positions."""
    return [(lo, min(lo + partition_size, num_rank_items)) for lo in range(0, num_rank_items, partition_size)]


def progress_path(out_dir, rank):
    """The per-rank manifest of an extraction: what it is, and the partitions it completed."""
    return os.path.join(out_dir, f"progress_rank{rank}.json")


def write_feature_partition(out_dir, rank, part, ids, feats, dtype="float32"):
    """Write one partition; feats first, then ids, each atomically (a pair with its ids file is whole)."""
    ids, feats = feature_rows(ids, feats, dtype, nonempty=True)
    ids_path, feats_path = partition_paths(out_dir, rank, part)
    save_npy_atomic(feats_path, feats)
    save_npy_atomic(ids_path, ids)


def check_feature_partition(out_dir, rank, part, count, dim, dtype):
    """The ids of a written partition, or None if its pair is missing, unreadable or not count x dim dtype."""
    ids_path, feats_path = partition_paths(out_dir, rank, part)
    try:
        ids = np.load(ids_path)
        feats = np.load(feats_path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    good = (ids.shape == (count,) and ids.dtype == np.int64 and feats.shape == (count, dim)
            and str(feats.dtype) == dtype)
    del feats
    return ids if good else None


def write_partitioned_meta(out_dir, world_size):
    """meta.json for the partitions of ranks 0..world_size-1, from their completed progress manifests."""
    counts, partitions, dim, dtype = {}, {}, None, None
    for rank in range(world_size):
        path = progress_path(out_dir, rank)
        progress = read_json(path, FeatureFileError, "extraction progress file")
        done = [int(entry["count"]) for entry in progress["partitions"]]
        if len(done) != progress["num_partitions"]:
            raise FeatureFileError(
                f"{path}: rank {rank} completed {len(done)} of {progress['num_partitions']} partitions")
        rank_dim, rank_dtype = progress["dim"], progress["extraction"]["dtype"]
        for part, count in enumerate(done):
            if check_feature_partition(out_dir, rank, part, count, rank_dim, rank_dtype) is None:
                raise FeatureFileError(f"{partition_paths(out_dir, rank, part)[1]}: missing or not the "
                                       f"{count} x {rank_dim} {rank_dtype} rows {path} lists")
        counts[str(rank)], partitions[str(rank)] = sum(done), done
        if not done:   # a rank with no items says nothing about dim or dtype
            continue
        dim = rank_dim if dim is None else dim
        dtype = rank_dtype if dtype is None else dtype
        if rank_dim != dim or rank_dtype != dtype:
            raise FeatureFileError(f"{path}: {rank_dim} x {rank_dtype} features differ from the other ranks' "
                                   f"({dim}, {dtype})")
    if dim is None:
        raise FeatureFileError(f"{out_dir}: all {world_size} shards are empty")
    meta = {"format": PARTITIONED_FORMAT_NAME, "dim": int(dim), "dtype": dtype, "counts": counts,
            "partitions": partitions}
    write_json_atomic(os.path.join(out_dir, META_FILE), meta)
    return meta


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


def _earlier_progress(out_dir, rank, extraction):
    """The rank's progress file if it records this same extraction, else None (with a warning why)."""
    path = progress_path(out_dir, rank)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            progress = json.load(f)
        if (not isinstance(progress, dict) or progress.get("format") != PROGRESS_FORMAT_NAME
                or not isinstance(progress.get("partitions"), list) or "extraction" not in progress):
            raise ValueError(f"not a {PROGRESS_FORMAT_NAME} file")
    except (OSError, ValueError) as error:
        logger.warning("%s: unreadable progress file (%s); rank %d starts afresh", path, error, rank)
        return None
    if progress["extraction"] != extraction:
        logger.warning("%s: rank %d's earlier partitions are of a different extraction (%s); deleting them and "
                       "starting afresh", out_dir, rank, "; ".join(_differences(progress["extraction"], extraction)))
        return None
    return progress


def _intact_prefix(out_dir, rank, progress, bounds, expected_pids):
    """The entries of the recorded partitions, in order, up to the first one whose pair is missing,
    damaged, of another shape or of other pids."""
    kept = []
    for part, entry in enumerate(progress["partitions"][:len(bounds)]):
        lo, hi = bounds[part]
        ids = check_feature_partition(out_dir, rank, part, hi - lo, progress.get("dim"),
                                      progress["extraction"]["dtype"])
        if (ids is None or not isinstance(entry, dict) or entry.get("count") != hi - lo
                or not np.array_equal(ids, expected_pids[lo:hi])):
            logger.warning("%s: partition %d of rank %d is incomplete or damaged; redoing it and the ones after it",
                           out_dir, part, rank)
            break
        kept.append(entry)
    return kept


def resume_partitions(out_dir, rank, extraction, expected_pids):
    """The progress of ``rank`` to continue from: the complete, intact prefix of the partitions recorded
    for this same extraction; every other file of the rank is deleted. ``expected_pids``: the rank's slice."""
    path = progress_path(out_dir, rank)
    bounds = partition_bounds(len(expected_pids), extraction["partition_size"])
    progress = _earlier_progress(out_dir, rank, extraction)
    kept = _intact_prefix(out_dir, rank, progress, bounds, expected_pids) if progress is not None else []
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


def start_folder(out_dir, world_size):
    """Rank 0, before any rank writes: the folder stops being a finished extraction (no meta.json),
    and the files of ranks a run with more processes left behind go."""
    _remove([os.path.join(out_dir, META_FILE)])
    for stale in _stale_ranks(out_dir, world_size):
        _remove(_rank_files(out_dir, stale))


def finish_folder(out_dir, world_size, expected_pids):
    """Rank 0, after every rank finished: meta.json from the progress files, then every expected pid
    checked to be there exactly once; returns the number of items."""
    write_partitioned_meta(out_dir, world_size)
    return verify_shards(out_dir, expected_pids)


def write_feature_folder(out_dir, parts, description, dtype="float32"):
    """A finished one-writer folder of ``parts`` ((ids, feats) pairs, one partition each, in
    order), in the layout feature extraction writes: what text-query embedding and the benchmarks
    write. ``description`` (JSON-serialisable) says what the features are; returns the item count."""
    os.makedirs(out_dir, exist_ok=True)
    start_folder(out_dir, 1)
    _remove(_rank_files(out_dir, 0))
    counts, written, dim = [], [], None
    for part, (ids, feats) in enumerate(parts):
        write_feature_partition(out_dir, 0, part, ids, feats, dtype)
        counts.append(len(ids))
        written.append(np.asarray(ids, dtype=np.int64))
        dim = int(np.shape(feats)[1])
    extraction = {**description, "dtype": dtype, "partition_size": max(counts, default=0)}
    write_json_atomic(progress_path(out_dir, 0), {
        "format": PROGRESS_FORMAT_NAME, "extraction": extraction, "num_partitions": len(counts), "dim": dim,
        "partitions": [{"count": count, "issues": {}} for count in counts]})
    return finish_folder(out_dir, 1, np.concatenate(written) if written else np.empty(0, np.int64))


class RankPartitions:
    """One rank's partitions of one extraction: what an earlier run completed, and each new one
    written and then recorded in the progress file."""

    def __init__(self, out_dir, rank, extraction, expected_pids):
        self.out_dir, self.rank, self.dtype = out_dir, rank, extraction["dtype"]
        self.bounds = partition_bounds(len(expected_pids), extraction["partition_size"])
        self.progress = resume_partitions(out_dir, rank, extraction, expected_pids)

    @property
    def completed(self):
        """How many partitions are written and recorded; the next one to write has this number."""
        return len(self.progress["partitions"])

    @property
    def items_done(self):
        return self.bounds[self.completed - 1][1] if self.completed else 0

    def write(self, ids, feats, issues):
        """Write the next partition and record it with its data issues ({kind: count})."""
        write_feature_partition(self.out_dir, self.rank, self.completed, ids, feats, self.dtype)
        self.progress["dim"] = int(feats.shape[1])
        self.progress["partitions"].append({"count": len(ids), "issues": dict(issues)})
        write_json_atomic(progress_path(self.out_dir, self.rank), self.progress)

    def issue_totals(self):
        """{kind: count} of the data issues of every completed partition, this run's and earlier ones'."""
        totals = collections.Counter()
        for entry in self.progress["partitions"]:
            totals.update(entry.get("issues", {}))
        return dict(totals)
