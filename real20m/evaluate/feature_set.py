"""A loaded set of item features, and reading its rows a chunk at a time.

The features of a folder are memory-mapped (``np.memmap``, or a ``ShardedArray`` over several
files) and read a chunk at a time (``read_rows``), the pages of each chunk released after use,
so a 20M-item gallery is never resident whole.
"""
import mmap
from dataclasses import dataclass

import numpy as np

from real20m.errors import InputError


class FeatureFileError(InputError, ValueError):
    """A feature file or folder that cannot be read; the message names it."""


@dataclass
class FeatureSet:
    ids: np.ndarray         # (N,) int64
    feats: object           # (N, D): ndarray, np.memmap or ShardedArray
    source: str
    repeated_rows: int = 0  # identical repeats of a pid dropped on load (legacy files of the original)

    def __len__(self):
        return len(self.ids)

    @property
    def dim(self):
        return self.feats.shape[1]


class ShardedArray:
    """Row-wise concatenation of memory-mapped shards without copying them.

    Supports what search needs: ``shape``, ``dtype``, ``len`` and row slices.
    """

    def __init__(self, parts):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.offsets[-1]), parts[0].shape[1])
        self.dtype = parts[0].dtype

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, rows):
        if not isinstance(rows, slice):
            raise TypeError("ShardedArray supports row slices only")
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise TypeError("ShardedArray supports contiguous row slices only")
        pieces = []
        for part, offset in zip(self.parts, self.offsets[:-1]):
            lo, hi = max(start - offset, 0), min(stop - offset, len(part))
            if lo < hi:
                pieces.append(part[lo:hi])
        if len(pieces) == 1:
            return pieces[0]
        if not pieces:
            return np.empty((0, self.shape[1]), self.dtype)
        return np.concatenate(pieces)

    def take_rows(self, rows):
        """Rows at sorted indices ``rows`` (e.g. a random training sample), as one array."""
        rows = np.asarray(rows, dtype=np.int64)
        owner = np.searchsorted(self.offsets, rows, side="right") - 1
        return np.concatenate([self.parts[p][rows[owner == p] - self.offsets[p]] for p in np.unique(owner)])


def _open_mappings(array):
    parts = array.parts if isinstance(array, ShardedArray) else [array]
    mappings = (getattr(part, "_mmap", None) for part in parts)
    return [mapping for mapping in mappings if mapping is not None and not mapping.closed]


def release_mapped_pages(array):
    """Drop the pages of a memory-mapped array (or of every part of a ShardedArray) from this process.

    Pages of a read-only file mapping stay resident, and counted in the process's RSS, until the
    kernel needs the memory; one pass over a 20 GB gallery would look like a 20 GB process. The
    mappings are clean, so dropping them loses nothing: the next read faults them back in (usually
    from the page cache). Arrays that are not memory-mapped are left alone.
    """
    for mapping in _open_mappings(array):
        mapping.madvise(mmap.MADV_DONTNEED)


def read_rows(array, start, stop):
    """Rows ``[start, stop)`` as a contiguous float32 array.

    From a memory-mapped array this is always a copy (never a view into the mapping), and the
    mapped pages it read are released afterwards, so streaming a gallery keeps one chunk resident.
    """
    if not _open_mappings(array):
        return np.ascontiguousarray(array[start:stop], dtype=np.float32)
    rows = np.array(array[start:stop], dtype=np.float32, order="C")
    release_mapped_pages(array)
    return rows


def read_sample(array, rows):
    """Rows at sorted indices ``rows`` (e.g. a training sample) as one float32 array, pages released."""
    sample = array.take_rows(rows) if isinstance(array, ShardedArray) else array[np.asarray(rows)]
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    release_mapped_pages(array)
    return sample

