"""Approximate Faiss indexes over galleries too large for exact search: build, shard, save, load.

An index is named by a Faiss ``index_factory`` string (``IVF4096,SQ8``, ``IVF65536,PQ64``,
``HNSW32``, ...) and always uses the inner-product metric (features are L2-normalised).
Building one for a gallery of N rows:

1. train once, on a random sample of ``train_size`` rows read in row order from the
   memory-mapped shards;
2. split the rows into ``shards`` contiguous ranges; each range gets its own copy of the trained,
   empty index and is added chunk by chunk, one float32 chunk in memory at a time;
3. search every shard and merge their top-k (``faiss.IndexShards`` with successive ids: shards are
   asked in parallel threads, one GPU each when there are GPUs, and the ids that come back are
   global gallery rows, as from one unsharded index).

``ShardedIndex.save`` writes a folder (one Faiss file per shard and a ``meta.json`` describing the
gallery it indexes) that ``ShardedIndex.load`` reads back after checking it was built for the same
gallery, so a 20M-item index is built once and searched many times.
"""

import hashlib
import os
import warnings

import numpy as np
from tqdm import tqdm

from real20m.evaluate.faiss_backend import import_faiss
from real20m.evaluate.feature_io import read_json, read_rows, read_sample, write_json_atomic

faiss = import_faiss()

INDEX_FORMAT = "real20m-faiss-index-v1"
META_FILE = "meta.json"
DEFAULT_TRAIN_SIZE = 262144


class IndexFileError(ValueError):
    """A saved index folder that cannot be used for this gallery; the message names it."""


def shard_bounds(n_rows, n_shards):
    """``n_shards`` contiguous ``(start, stop)`` row ranges covering ``n_rows``, sizes within one row."""
    if n_shards < 1:
        raise ValueError(f"the number of shards must be at least 1, got {n_shards}")
    if n_shards > n_rows:
        raise ValueError(f"cannot split a gallery of {n_rows} items into {n_shards} shards")
    edges = [n_rows * shard // n_shards for shard in range(n_shards + 1)]
    return list(zip(edges[:-1], edges[1:]))


def training_sample(gallery, train_size, seed=0):
    """``train_size`` distinct gallery rows drawn with ``seed`` (all rows when the gallery is smaller)."""
    n_rows = len(gallery)
    if n_rows <= train_size:
        return read_rows(gallery, 0, n_rows)
    rows = np.sort(np.random.default_rng(seed).choice(n_rows, size=train_size, replace=False))
    return read_sample(gallery, rows)


def train_index(gallery, factory, train_size=DEFAULT_TRAIN_SIZE, seed=0, verbose=False):
    """A trained, empty CPU index for vectors of ``gallery``'s dimension (inner-product metric)."""
    index = faiss.index_factory(gallery.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        sample = training_sample(gallery, train_size, seed)
        index.verbose = verbose   # Faiss then prints each k-means iteration: the progress of training
        index.train(sample)
        index.verbose = False
    return index


class _Devices:
    """Where shard ``i`` lives: the CPU, or GPU ``i % n_gpus`` (one Faiss resource object per GPU)."""

    def __init__(self, n_gpus):
        self.n_gpus = n_gpus
        self.resources = {}
        self.used = set()   # the GPUs that really hold a shard (metrics.json reports them)

    def place(self, index, shard_number):
        if not self.n_gpus:
            return index
        device = shard_number % self.n_gpus
        if device not in self.resources:
            self.resources[device] = faiss.StandardGpuResources()
        try:
            placed = faiss.index_cpu_to_gpu(self.resources[device], device, index)
            self.used.add(device)
            return placed
        except RuntimeError as error:   # e.g. HNSW has no GPU implementation
            warnings.warn(f"this index stays on the CPU: Faiss cannot move it to a GPU ({error})")
            return index


def _on_gpu(index):
    gpu_index_class = getattr(faiss, "GpuIndex", None)
    return gpu_index_class is not None and isinstance(index, gpu_index_class)


def _to_cpu(index):
    return faiss.index_gpu_to_cpu(index) if _on_gpu(index) else index


class ShardedIndex:
    """One Faiss index per contiguous gallery range, searched as a single index."""

    def __init__(self, parts, factory, devices=None):
        self.parts = parts
        self.factory = factory
        self.devices = devices   # keeps the GPU resources alive as long as the indexes
        if len(parts) == 1:
            self.index = parts[0]
        else:
            self.index = faiss.IndexShards(parts[0].d, True, True)   # threaded, successive ids
            for part in parts:
                self.index.add_shard(part)

    @classmethod
    def build(cls, gallery, factory, shards=1, train_size=DEFAULT_TRAIN_SIZE, seed=0,
              chunk_size=1 << 20, n_gpus=0, show_progress=True):
        """Train on a sample of ``gallery``, then add its rows shard by shard, chunk by chunk."""
        trained = train_index(gallery, factory, train_size, seed, verbose=show_progress)
        devices = _Devices(n_gpus)
        parts = []
        with tqdm(total=len(gallery), desc="index gallery", unit="item", disable=not show_progress) as progress:
            for number, (start, stop) in enumerate(shard_bounds(len(gallery), shards)):
                part = devices.place(faiss.clone_index(trained), number)
                for chunk_start in range(start, stop, chunk_size):
                    chunk_stop = min(chunk_start + chunk_size, stop)
                    part.add(read_rows(gallery, chunk_start, chunk_stop))
                    progress.update(chunk_stop - chunk_start)
                parts.append(part)
        return cls(parts, factory, devices)

    def set_search_parameters(self, nprobe=None, params=None):
        """``nprobe`` and any Faiss ParameterSpace string (e.g. ``efSearch=128``) on every shard."""
        for part in self.parts:
            space = faiss.GpuParameterSpace() if _on_gpu(part) else faiss.ParameterSpace()
            if nprobe is not None:
                space.set_index_parameter(part, "nprobe", int(nprobe))
            if params:
                space.set_index_parameters(part, params)

    def search(self, queries, k):
        return self.index.search(queries, k)

    def gpu_ids(self):
        """The GPUs holding a shard (none: all on the CPU, also when Faiss could not move them)."""
        return sorted(self.devices.used) if self.devices is not None else []

    def save(self, folder, gallery_description):
        """Write one ``shard<i>.faiss`` per shard, then ``meta.json`` (so a folder with it is complete)."""
        os.makedirs(folder, exist_ok=True)
        for number, part in enumerate(self.parts):
            path = os.path.join(folder, f"shard{number}.faiss")
            faiss.write_index(_to_cpu(part), path + ".tmp")
            os.replace(path + ".tmp", path)
        meta = {"format": INDEX_FORMAT, "index": self.factory, "dim": int(self.parts[0].d),
                "shard_sizes": [int(part.ntotal) for part in self.parts], "gallery": gallery_description}
        write_json_atomic(os.path.join(folder, META_FILE), meta)

    @classmethod
    def load(cls, folder, gallery_description, dim, factory=None, shards=None, n_gpus=0):
        """Read a saved index, refusing one built for another gallery, dimension, factory or sharding."""
        meta = read_index_meta(folder)
        expected = {"dim": dim, "index": factory, "gallery": gallery_description}
        for key, value in expected.items():
            if value is not None and meta[key] != value:
                raise IndexFileError(f"{folder}: the saved index has {key} {meta[key]!r}, "
                                     f"but this evaluation has {value!r}; build it again with --save_index")
        if shards is not None and len(meta["shard_sizes"]) != shards:
            raise IndexFileError(f"{folder}: the saved index has {len(meta['shard_sizes'])} shards, "
                                 f"--shards asks for {shards}")
        devices = _Devices(n_gpus)
        parts = []
        for number, size in enumerate(meta["shard_sizes"]):
            path = os.path.join(folder, f"shard{number}.faiss")
            try:
                part = faiss.read_index(path)
            except RuntimeError as error:
                raise IndexFileError(f"{path}: cannot read the Faiss index: {error}") from error
            if part.ntotal != size or part.d != meta["dim"]:
                raise IndexFileError(f"{path}: holds {part.ntotal} vectors of dimension {part.d}, "
                                     f"{META_FILE} says {size} of dimension {meta['dim']}")
            parts.append(devices.place(part, number))
        return cls(parts, meta["index"], devices)


def read_index_meta(folder):
    path = os.path.join(folder, META_FILE)
    meta = read_json(path, IndexFileError, "the index description")
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        raise IndexFileError(f"{path}: not a saved real20m index (format {INDEX_FORMAT!r} expected)")
    return meta


def describe_gallery(ids):
    """What a saved index must match: the number of gallery items and a digest of their ids in order."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    return {"num_items": int(len(ids)), "ids_blake2b": hashlib.blake2b(ids.tobytes(), digest_size=16).hexdigest()}
