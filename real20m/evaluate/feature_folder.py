"""The native feature folder: binary ``.npy`` files per writer rank, described by ``meta.json``.

One shard per rank (``real20m-features-v1``, what earlier versions wrote; still read):
``ids_rank<r>.npy`` int64 and ``feats_rank<r>.npy`` float32/float16, and a ``meta.json`` with the
dimension, dtype and the row count of every shard.

Partitioned (``real20m-features-v2``, what feature extraction writes, see ``feature_partitions``):
each rank's rows in partitions ``ids_rank<r>_part<p>.npy`` + ``feats_rank<r>_part<p>.npy``
(p = 00000, 00001, ...); ``meta.json`` has, besides the per-rank ``counts``, ``partitions``: the
row count of each partition of each rank. Readers concatenate them rank by rank, partition by
partition; a folder of either format reads the same way.

Every file appears atomically (``real20m.utils.atomic``): a reader never sees half of one.
"""
import contextlib
import json
import os

import numpy as np

from real20m.evaluate.feature_set import FeatureFileError, FeatureSet, ShardedArray
from real20m.utils.atomic import atomic_open, atomic_path

META_FILE = "meta.json"
FORMAT_NAME = "real20m-features-v1"              # one shard per rank
PARTITIONED_FORMAT_NAME = "real20m-features-v2"  # bounded partitions per rank
SUPPORTED_DTYPES = ("float32", "float16")


def shard_paths(out_dir, rank):
    """(ids path, feats path) of rank ``rank``'s one shard."""
    return (os.path.join(out_dir, f"ids_rank{rank}.npy"),
            os.path.join(out_dir, f"feats_rank{rank}.npy"))


def partition_paths(out_dir, rank, part):
    """(ids path, feats path) of partition ``part`` of rank ``rank``."""
    stem = f"rank{rank}_part{part:05d}"
    return (os.path.join(out_dir, f"ids_{stem}.npy"),
            os.path.join(out_dir, f"feats_{stem}.npy"))


def check_dtype(dtype):
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype!r}")


def feature_rows(ids, feats, dtype, nonempty=False):
    """(ids as int64, feats as ``dtype``), both contiguous; ValueError unless feats is (len(ids), D)
    (and, with ``nonempty``, has rows)."""
    check_dtype(dtype)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    feats = np.ascontiguousarray(feats, dtype=dtype)
    if feats.ndim != 2 or len(feats) != len(ids) or (nonempty and not len(ids)):
        at_least = " > 0" if nonempty else ""
        raise ValueError(f"feats must be (N, D) with N = len(ids) = {len(ids)}{at_least}, got {feats.shape}")
    return ids, feats


@contextlib.contextmanager
def _write_failure_named(path):
    """A write that fails (a full disk, a read-only folder) is one FeatureFileError naming ``path``;
    every file already complete stays as it was."""
    try:
        yield
    except OSError as error:
        raise FeatureFileError(f"{path}: cannot write ({error.strerror or error}); the files already "
                               "written are unchanged, and a rerun continues after the last complete one") from None


def save_npy_atomic(path, array):
    """``np.save`` that replaces ``path`` only with a complete file."""
    with _write_failure_named(path), atomic_path(path, path + ".tmp.npy") as temp:
        np.save(temp, array)


def write_json_atomic(path, value):
    """Write ``value`` as JSON to a temporary file, then rename it: readers see all of it or nothing."""
    with _write_failure_named(path), atomic_open(path, "w", temp=path + ".tmp") as f:
        json.dump(value, f, indent=1)


def read_json(path, error_class, what):
    """Parsed JSON of ``path``; a missing or malformed file raises ``error_class`` naming it."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise error_class(f"{path}: cannot read {what}: {error}") from error



def _check_unique_ids(ids, source):
    unique, counts = np.unique(ids, return_counts=True)
    duplicated = unique[counts > 1]
    if len(duplicated):
        raise FeatureFileError(
            f"{source}: {len(duplicated)} pids appear more than once "
            f"(e.g. {duplicated[:5].tolist()}); every item must be written exactly once")


def _folder_pieces(folder, meta):
    """(rank, ids path, feats path, row count) of every shard or partition, in reading order."""
    if meta.get("format", FORMAT_NAME) == PARTITIONED_FORMAT_NAME:
        return [(int(rank), *partition_paths(folder, int(rank), part), int(count))
                for rank, counts in sorted(meta["partitions"].items(), key=lambda kv: int(kv[0]))
                for part, count in enumerate(counts)]
    if meta.get("format", FORMAT_NAME) != FORMAT_NAME:
        raise FeatureFileError(f"{os.path.join(folder, META_FILE)}: unknown feature format {meta.get('format')!r}")
    return [(int(rank), *shard_paths(folder, int(rank)), int(count))
            for rank, count in sorted(meta["counts"].items(), key=lambda kv: int(kv[0]))]


def _allow_open_files(needed):
    """Raise the soft limit on open files if ``needed`` memory maps (each holds a descriptor) would pass it."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and needed + 256 > soft:
            target = needed + 256 if hard == resource.RLIM_INFINITY else min(hard, needed + 256)
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
    except (ImportError, ValueError, OSError):
        pass   # not POSIX, or not allowed: opening the maps reports the problem


def load_shard_folder(folder):
    meta = read_json(os.path.join(folder, META_FILE), FeatureFileError, "feature meta file")
    pieces = _folder_pieces(folder, meta)
    _allow_open_files(len(pieces))
    id_parts, feat_parts = [], []
    for _, ids_path, feats_path, count in pieces:
        try:
            ids = np.load(ids_path)
            feats = np.load(feats_path, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise FeatureFileError(f"{folder}: cannot read a shard listed in {META_FILE}: {error}") from error
        if count == 0 and len(ids) == 0:
            continue
        if len(ids) != count or feats.shape != (count, meta["dim"]) or str(feats.dtype) != meta["dtype"]:
            raise FeatureFileError(
                f"{feats_path}: shard holds {len(ids)} ids and {feats.shape} {feats.dtype} features, "
                f"meta.json says {count} x {meta['dim']} {meta['dtype']}")
        id_parts.append(ids)
        feat_parts.append(feats)
    if not id_parts:
        raise FeatureFileError(f"{folder}: {META_FILE} lists no rows")
    ids = np.concatenate(id_parts).astype(np.int64, copy=False)
    _check_unique_ids(ids, folder)
    feats = feat_parts[0] if len(feat_parts) == 1 else ShardedArray(feat_parts)
    return FeatureSet(ids=ids, feats=feats, source=folder)
