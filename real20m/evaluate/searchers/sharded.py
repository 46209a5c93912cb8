"""Approximate search with Faiss indexes, the gallery split over shards (backend ``faiss``).

An index is named by a Faiss ``index_factory`` string (``IVF4096,SQ8``, ``IVF65536,PQ64``,
``HNSW32``, ...). Building one for a gallery of N rows:

1. train once on a sample (``faiss_index.train_index``);
2. split the rows into ``shards`` contiguous ranges; each range gets its own copy of the trained,
   empty index and is added chunk by chunk, one float32 chunk in memory at a time;
3. search every shard and merge their top-k (``faiss.IndexShards`` with successive ids: shards are
   asked in parallel threads, one GPU each when there are GPUs, and the ids that come back are
   global gallery rows, as from one unsharded index).

``save`` writes a folder (one Faiss file per shard and a ``meta.json`` describing the gallery it
indexes) that ``load`` reads back after checking it was built for the same gallery, so a
20M-item index is built once and searched many times. Approximate indexes keep Faiss's choice
among items tied at the k-th place.
"""

import hashlib
import os

import numpy as np
from tqdm import tqdm

from real20m.evaluate.faiss_backend import SearchDevice, faiss_description, import_faiss
from real20m.evaluate.feature_io import read_rows, write_json_atomic
from real20m.evaluate.searchers.faiss_index import (Devices, read_index, set_search_parameters, train_index,
                                                    write_index)
from real20m.evaluate.searchers.registry import (META_FILE, IndexFileError, read_index_meta,
                                                 register_search_backend)

INDEX_FORMAT = "real20m-faiss-index-v1"


def shard_bounds(n_rows, n_shards):
    """``n_shards`` contiguous ``(start, stop)`` row ranges covering ``n_rows``, sizes within one row."""
    if n_shards < 1:
        raise ValueError(f"the number of shards must be at least 1, got {n_shards}")
    if n_shards > n_rows:
        raise ValueError(f"cannot split a gallery of {n_rows} items into {n_shards} shards")
    edges = [n_rows * shard // n_shards for shard in range(n_shards + 1)]
    return list(zip(edges[:-1], edges[1:]))


def describe_gallery(ids):
    """What a saved index must match: the number of gallery items and a digest of their ids in order."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    return {"num_items": int(len(ids)), "ids_blake2b": hashlib.blake2b(ids.tobytes(), digest_size=16).hexdigest()}


def _shard_path(folder, number):
    return os.path.join(folder, f"shard{number}.faiss")


@register_search_backend("faiss")
class ShardedIndex:
    """One Faiss index per contiguous gallery range, searched as a single index."""

    index_format = INDEX_FORMAT

    def __init__(self, parts, factory, devices=None, device_note=None):
        self.parts = parts
        self.factory = factory
        self.devices = devices   # keeps the GPU resources alive as long as the indexes
        self.device_note = device_note
        self.search_parameters = None   # (nprobe, params) still to set before the first search
        self.size, self.dim = sum(int(part.ntotal) for part in parts), int(parts[0].d)
        if len(parts) == 1:
            self.index = parts[0]
        else:
            self.index = import_faiss().IndexShards(parts[0].d, True, True)   # threaded, successive ids
            for part in parts:
                self.index.add_shard(part)

    @classmethod
    def build(cls, gallery, config, device: SearchDevice):
        """Train on a sample of ``gallery``, then add its rows shard by shard, chunk by chunk."""
        trained = train_index(gallery, config.index, config.train_size, config.seed, verbose=config.show_progress)
        devices = Devices(device.n_gpus)
        parts = []
        with tqdm(total=len(gallery), desc="index gallery", unit="item", disable=not config.show_progress) as progress:
            for number, rows in enumerate(shard_bounds(len(gallery), config.shards or 1)):
                part = devices.place(import_faiss().clone_index(trained), number)
                _add_rows(part, gallery, rows, config.chunk_size, progress)
                parts.append(part)
        index = cls(parts, config.index, devices, device.note)
        # Set before the first search, not now: a saved folder keeps Faiss's defaults, as it always has.
        index.search_parameters = (config.nprobe, config.params)
        return index

    @classmethod
    def load(cls, folder, config, device: SearchDevice, expected):
        """Read a saved index, refusing one built for another gallery, dimension, factory or sharding."""
        meta = read_index_meta(folder)
        _check_meta(folder, meta, config, expected)
        devices = Devices(device.n_gpus)
        parts = [devices.place(_read_shard(folder, number, size, meta["dim"]), number)
                 for number, size in enumerate(meta["shard_sizes"])]
        index = cls(parts, meta["index"], devices, device.note)
        index.set_search_parameters(config.nprobe, config.params)
        return index

    def set_search_parameters(self, nprobe=None, params=None):
        """``nprobe`` and any Faiss ParameterSpace string (e.g. ``efSearch=128``) on every shard."""
        for part in self.parts:
            set_search_parameters(part, nprobe, params)

    def search(self, queries, k):
        if self.search_parameters is not None:
            self.set_search_parameters(*self.search_parameters)
            self.search_parameters = None
        return self.index.search(queries, k)

    def gpu_ids(self):
        """The GPUs holding a shard (none: all on the CPU, also when Faiss could not move them)."""
        return sorted(self.devices.used) if self.devices is not None else []

    def describe(self):
        used = len(self.gpu_ids())   # Faiss may have kept shards on the CPU
        return {"index": self.factory, "device": "cuda" if used else "cpu", "num_gpus": used,
                "device_note": self.device_note, **faiss_description(import_faiss())}

    def save(self, folder, gallery_description):
        """Write one ``shard<i>.faiss`` per shard, then ``meta.json`` (so a folder with it is complete)."""
        os.makedirs(folder, exist_ok=True)
        for number, part in enumerate(self.parts):
            write_index(part, _shard_path(folder, number))
        meta = {"format": INDEX_FORMAT, "index": self.factory, "dim": self.dim,
                "shard_sizes": [int(part.ntotal) for part in self.parts], "gallery": gallery_description}
        write_json_atomic(os.path.join(folder, META_FILE), meta)


def _add_rows(index, gallery, rows, chunk_size, progress):
    """Add gallery rows ``start:stop`` to ``index``, one float32 chunk in memory at a time."""
    start, stop = rows
    for chunk_start in range(start, stop, chunk_size):
        chunk_stop = min(chunk_start + chunk_size, stop)
        index.add(read_rows(gallery, chunk_start, chunk_stop))
        progress.update(chunk_stop - chunk_start)


def _check_meta(folder, meta, config, expected):
    """Refuse a saved index built for another gallery, dimension, factory (``--index``) or sharding."""
    wanted = {"dim": expected.dim, "index": None if config.exact else config.index, "gallery": expected.description}
    for key, value in wanted.items():
        if value is not None and meta[key] != value:
            raise IndexFileError(f"{folder}: the saved index has {key} {meta[key]!r}, "
                                 f"but this evaluation has {value!r}; build it again with --save_index")
    if config.shards is not None and len(meta["shard_sizes"]) != config.shards:
        raise IndexFileError(f"{folder}: the saved index has {len(meta['shard_sizes'])} shards, "
                             f"--shards asks for {config.shards}")


def _read_shard(folder, number, size, dim):
    path = _shard_path(folder, number)
    try:
        part = read_index(path)
    except RuntimeError as error:
        raise IndexFileError(f"{path}: cannot read the Faiss index: {error}") from error
    if part.ntotal != size or part.d != dim:
        raise IndexFileError(f"{path}: holds {part.ntotal} vectors of dimension {part.d}, "
                             f"{META_FILE} says {size} of dimension {dim}")
    return part
