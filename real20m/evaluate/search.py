"""Top-k inner-product search of query features over a gallery with Faiss.

Exact search streams the gallery in row chunks (each converted to contiguous
float32 only while it is searched) and merges per-chunk top-k lists, so a
float16 memory-mapped gallery of any size needs only one chunk in memory.
When the whole gallery is already a float32 array it is searched in place:
one fused GEMM + heap pass, no copy. Queries are processed in chunks as well;
``iter_search`` yields per query chunk so callers can score results without
holding the full (Q, k) matrices.

Approximate search uses any ``faiss.index_factory`` index (inner-product metric), trained on
a random gallery sample, filled chunk by chunk, optionally split into shards and saved or
loaded (see ``real20m.evaluate.index``).
Results are ordered by score (descending), ties by gallery index (ascending);
on CPU exact search this holds at the k-th place too, so chunked and one-shot
results are identical (GPU and approximate indexes keep Faiss's choice there).
"""

import contextlib
import warnings

import faiss
import numpy as np
from tqdm import tqdm

from real20m.evaluate.feature_io import read_rows
from real20m.evaluate.index import DEFAULT_TRAIN_SIZE, ShardedIndex, read_index_meta

DEFAULT_QUERY_CHUNK = 512
DEFAULT_GALLERY_CHUNK = 1 << 20
MAX_GPU_K = 2048   # Faiss GPU top-k limit
# Gallery rows per BLAS call inside faiss.knn: Faiss's default (1024) leaves the GEMM ~10% slower
# than one big GEMM at k=1000; 4096 rows x 512 queries is an 8 MB score block.
BLAS_DATABASE_ROWS = 4096


@contextlib.contextmanager
def _blas_block_rows(rows):
    """Set Faiss's BLAS gallery block size for the duration of a search, then restore it."""
    previous = faiss.cvar.distance_compute_blas_database_bs
    faiss.cvar.distance_compute_blas_database_bs = rows
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_database_bs = previous


def is_exact(index_factory):
    return index_factory in (None, "", "Flat", "exact")


def _gpu_count(use_gpu):
    if use_gpu is False or use_gpu == "never":
        return 0
    gpu_build = hasattr(faiss, "StandardGpuResources") and hasattr(faiss, "GpuMultipleClonerOptions")
    available = faiss.get_num_gpus() if gpu_build and hasattr(faiss, "get_num_gpus") else 0
    if use_gpu is True and available == 0:
        raise RuntimeError("use_gpu=True but this Faiss build sees no GPU (install faiss-gpu)")
    return available


def _to_gpu(index, n_gpus):
    """Shard a CPU index over all GPUs (each GPU holds 1/n of the gallery)."""
    if not n_gpus:
        return index
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True
    return faiss.index_cpu_to_all_gpus(index, co=options)


def exact_knn(queries, rows, k):
    """faiss.knn (one fused GEMM + heap pass), made deterministic at the k-th place too.

    Faiss's heap keeps an arbitrary one of several items tied at the cut-off; one extra
    result per query reveals such rows, which are then ranked exactly (rare: it takes
    identical scores, e.g. duplicate gallery vectors).
    """
    depth = min(k + 1, len(rows))
    with _blas_block_rows(BLAS_DATABASE_ROWS):
        scores, indices = faiss.knn(queries, rows, depth, metric=faiss.METRIC_INNER_PRODUCT)
    if depth <= k:
        return scores, indices
    for row in np.flatnonzero(scores[:, k] == scores[:, k - 1]):
        row_scores = rows @ queries[row]
        order = np.lexsort((np.arange(len(rows)), -row_scores))[:depth]
        scores[row], indices[row] = row_scores[order], order
    return scores[:, :k], indices[:, :k]


def sort_results(scores, indices):
    """Order every row by score descending, then index ascending (deterministic ties).

    Only rows that actually contain a tie are re-sorted; the rest are already ordered.
    """
    ties = np.any(scores[:, 1:] == scores[:, :-1], axis=1)
    for row in np.flatnonzero(ties):
        order = np.lexsort((indices[row], -scores[row]))
        scores[row] = scores[row][order]
        indices[row] = indices[row][order]
    return scores, indices


def merge_topk(scores_a, indices_a, scores_b, indices_b, k):
    """Merge two top-k lists per row into one (score desc, index asc; -1 entries last)."""
    scores = np.concatenate([scores_a, scores_b], axis=1)
    indices = np.concatenate([indices_a, indices_b], axis=1)
    scores = np.where(indices < 0, -np.inf, scores).astype(np.float32)
    order = np.lexsort((np.where(indices < 0, np.iinfo(np.int64).max, indices), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(indices, order, 1)


class ExactSearcher:
    """Brute-force inner product, gallery streamed in chunks of ``chunk_size`` rows."""

    def __init__(self, gallery, chunk_size=DEFAULT_GALLERY_CHUNK, n_gpus=0):
        self.gallery = gallery
        self.chunk_size = chunk_size
        in_place = (isinstance(gallery, np.ndarray) and gallery.dtype == np.float32
                    and gallery.flags.c_contiguous and len(gallery) <= chunk_size)
        self.whole_gallery = gallery if in_place else None
        self.gpu_index = self._gpu_flat_index(gallery, chunk_size, n_gpus) if n_gpus else None

    @staticmethod
    def _gpu_flat_index(gallery, chunk_size, n_gpus):
        index = _to_gpu(faiss.IndexFlatIP(gallery.shape[1]), n_gpus)
        for start in range(0, len(gallery), chunk_size):
            index.add(read_rows(gallery, start, start + chunk_size))
        return index

    def search(self, queries, k):
        if self.gpu_index is not None:
            return self.gpu_index.search(queries, k)
        if self.whole_gallery is not None:
            return exact_knn(queries, self.whole_gallery, k)
        best = None
        for start in range(0, len(self.gallery), self.chunk_size):
            rows = read_rows(self.gallery, start, start + self.chunk_size)
            scores, indices = exact_knn(queries, rows, min(k, len(rows)))
            indices = np.where(indices >= 0, indices + start, -1)
            best = (scores, indices) if best is None else merge_topk(*best, scores, indices, k)
        return best


def approximate_index(gallery_feats, index_factory, nprobe=None, params=None, train_size=DEFAULT_TRAIN_SIZE,
                      seed=0, shards=None, save_index=None, load_index=None, gallery_description=None,
                      chunk_size=DEFAULT_GALLERY_CHUNK, n_gpus=0, show_progress=True):
    """The saved index in folder ``load_index``, or one built now (and saved to ``save_index``)."""
    description = gallery_description or {"num_items": len(gallery_feats)}
    if load_index:
        index = ShardedIndex.load(load_index, description, gallery_feats.shape[1], index_factory, shards, n_gpus)
    else:
        index = ShardedIndex.build(gallery_feats, index_factory, shards or 1, train_size, seed, chunk_size,
                                   n_gpus, show_progress)
        if save_index:
            index.save(save_index, description)
    index.set_search_parameters(nprobe, params)
    return index


def _clamp_k(k, gallery_size, n_gpus):
    if k > gallery_size:
        warnings.warn(f"k={k} is larger than the gallery ({gallery_size} items); using k={gallery_size}")
        k = gallery_size
    if n_gpus and k > MAX_GPU_K:
        raise ValueError(f"Faiss on GPU supports k <= {MAX_GPU_K}, got k={k}")
    return k


def iter_search(query_feats, gallery_feats, k, index_factory=None, query_chunk=DEFAULT_QUERY_CHUNK,
                chunk_size=DEFAULT_GALLERY_CHUNK, nprobe=None, params=None, use_gpu="auto",
                train_size=DEFAULT_TRAIN_SIZE, seed=0, show_progress=True, shards=None, save_index=None,
                load_index=None, gallery_description=None):
    """Yield ``(start, scores (q, k) float32, indices (q, k) int64)`` per chunk of queries.

    ``indices`` are gallery row numbers (-1 where an approximate index found fewer than k).
    Approximate search only (an ``index_factory`` other than exact): ``shards`` splits the gallery
    over that many sub-indexes; ``save_index`` / ``load_index`` name a folder to write the built
    index to / read it from, checked against ``gallery_description`` (see ``index.describe_gallery``).
    """
    if query_feats.shape[1] != gallery_feats.shape[1]:
        raise ValueError(f"query dim {query_feats.shape[1]} != gallery dim {gallery_feats.shape[1]}")
    if len(gallery_feats) == 0:
        raise ValueError("the gallery is empty")
    if load_index and is_exact(index_factory):
        index_factory = read_index_meta(load_index)["index"]
    n_gpus = _gpu_count(use_gpu)
    k = _clamp_k(k, len(gallery_feats), n_gpus)
    if is_exact(index_factory):
        if shards not in (None, 1) or save_index or load_index:
            raise ValueError("--shards, --save_index and --load_index need an approximate --index "
                             "(exact search already streams the gallery in chunks of --chunk_size rows)")
        searcher = ExactSearcher(gallery_feats, chunk_size, n_gpus)
    else:
        searcher = approximate_index(gallery_feats, index_factory, nprobe, params, train_size, seed, shards,
                                     save_index, load_index, gallery_description, chunk_size, n_gpus,
                                     show_progress)
    n_queries = len(query_feats)
    with tqdm(total=n_queries, desc="search", unit="query", disable=not show_progress) as progress:
        for start in range(0, n_queries, query_chunk):
            queries = read_rows(query_feats, start, start + query_chunk)
            scores, indices = searcher.search(queries, k)
            yield start, *sort_results(scores, indices.astype(np.int64, copy=False))
            progress.update(len(queries))


def search(query_feats, gallery_feats, k, index_factory=None, chunk_size=DEFAULT_GALLERY_CHUNK, nprobe=None,
           use_gpu="auto", train_size=DEFAULT_TRAIN_SIZE, query_chunk=DEFAULT_QUERY_CHUNK, params=None, seed=0,
           show_progress=True, shards=None, save_index=None, load_index=None, gallery_description=None):
    """Top-k search of all queries; returns (scores float32 (Q, k), indices int64 (Q, k)).

    See ``iter_search``; this collects its chunks (use that to keep memory at one chunk).
    """
    parts = list(iter_search(query_feats, gallery_feats, k, index_factory, query_chunk=query_chunk,
                             chunk_size=chunk_size, nprobe=nprobe, params=params, use_gpu=use_gpu,
                             train_size=train_size, seed=seed, show_progress=show_progress, shards=shards,
                             save_index=save_index, load_index=load_index,
                             gallery_description=gallery_description))
    if not parts:
        k = min(k, len(gallery_feats))
        return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
    return np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])
