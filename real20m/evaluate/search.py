"""Top-k inner-product search of query features over a gallery with Faiss.

Exact search streams the gallery in row chunks (each converted to contiguous
float32 only while it is searched) and merges per-chunk top-k lists, so a
float16 memory-mapped gallery of any size needs only one chunk in memory.
When the whole gallery is already a float32 array it is searched in place:
one fused GEMM + heap pass, no copy. Queries are processed in chunks as well;
``iter_search`` yields per query chunk so callers can score results without
holding the full (Q, k) matrices.

Approximate search builds any ``faiss.index_factory`` index with inner-product
metric, trains it on a random gallery sample and adds the gallery in chunks.
Results are ordered by score (descending), ties by gallery index (ascending);
on CPU exact search this holds at the k-th place too, so chunked and one-shot
results are identical (GPU and approximate indexes keep Faiss's choice there).
"""

import contextlib
import ctypes
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np
from tqdm import tqdm

DEFAULT_QUERY_CHUNK = 512
DEFAULT_GALLERY_CHUNK = 1 << 20
DEFAULT_TRAIN_SIZE = 262144
MAX_GPU_K = 2048   # Faiss GPU top-k limit
# Gallery rows per BLAS call inside faiss.knn: Faiss's default (1024) leaves the GEMM ~10% slower
# than one big GEMM at k=1000; 4096 rows x 512 queries is an 8 MB score block.
BLAS_DATABASE_ROWS = 4096
# Blocked exact search (CPU): each worker thread scores BLOCK_QUERIES queries against
# BLOCK_GALLERY gallery rows at a time into a reused float32 buffer (256 x 2048), with a
# single-threaded sgemm, then keeps only scores above its running k-th best (2 MB buffer + 0.5 MB mask
# per thread; small enough to stay in L2/L3 while it is filtered).
BLOCK_QUERIES = 256
BLOCK_GALLERY = 2048
FIRST_BLOCK_ROWS = 32
MERGE_ROWS = 64
_INT64_MIN = np.iinfo(np.int64).min
_LOW32 = np.int64(0xFFFFFFFF)

@contextlib.contextmanager
def _blas_block_rows(rows):
    """Set Faiss's BLAS gallery block size for the duration of a search, then restore it."""
    previous = faiss.cvar.distance_compute_blas_database_bs
    faiss.cvar.distance_compute_blas_database_bs = rows
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_database_bs = previous


def _as_float32_rows(array, start, stop):
    return np.ascontiguousarray(array[start:stop], dtype=np.float32)


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


# --------------------------------------------------------------------- blocked exact top-k (CPU)

def _find_blas_thread_setter():
    """numpy's OpenBLAS ``openblas_set_num_threads_local`` (per calling thread), or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line and line.rstrip().endswith(".so")
                     and "numpy" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            setter = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
        return setter
    return None


_BLAS_THREADS_LOCAL = None


def _worker_count():
    global _BLAS_THREADS_LOCAL
    if _BLAS_THREADS_LOCAL is None:
        _BLAS_THREADS_LOCAL = _find_blas_thread_setter() or False
    if not _BLAS_THREADS_LOCAL:
        return 1   # cannot pin BLAS to one thread per worker: one caller, BLAS's own threads
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _score_keys(scores, columns):
    """float32 scores + gallery rows -> int64 keys ordered by (score desc, row asc) as key desc."""
    bits = (scores + np.float32(0.0)).view(np.int32).astype(np.int64)   # + 0.0 turns -0.0 into 0.0
    bits ^= (bits >> 31) & 0x7FFFFFFF                                   # order-preserving for negatives
    return (bits << 32) | (_LOW32 - columns)


def _key_scores(keys):
    bits = (keys >> 32).astype(np.int32)
    bits ^= (bits >> 31) & 0x7FFFFFFF
    return bits.view(np.float32)


def _true_positions(mask):
    """(rows, cols) of the True entries of a C-contiguous 2-d bool array; sparse masks are fast."""
    flat = mask.reshape(-1)
    if flat.size % 8 or np.count_nonzero(flat) * 64 > flat.size:   # dense: plain nonzero is faster
        return np.nonzero(mask)
    words = np.flatnonzero(flat.view(np.uint64))        # 8 flags per word: 8x less to scan
    if len(words) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    positions = (words[:, None] * 8 + np.arange(8)).reshape(-1)
    positions = positions[flat[positions]]
    return np.divmod(positions, mask.shape[1])


def _merge_candidates(top, rows, keys, k):
    """top (b, k) keys (or None); add candidate ``keys`` of rows ``rows`` (sorted); keep the k largest.

    Works MERGE_ROWS rows at a time so the padded (rows, k + candidates) array stays small.
    """
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    counts = np.diff(np.r_[starts, len(rows)])
    owners = rows[starts]
    merged = [] if top is None else top
    for lo in range(0, len(owners), MERGE_ROWS):
        group_counts = counts[lo:lo + MERGE_ROWS]
        group_owners = owners[lo:lo + MERGE_ROWS]
        first = starts[lo]
        last = first + int(group_counts.sum())
        width = int(group_counts.max())
        padded = np.full((len(group_owners), width if top is None else k + width), _INT64_MIN, np.int64)
        padded[np.repeat(np.arange(len(group_owners)), group_counts),
               np.arange(last - first) - np.repeat(starts[lo:lo + MERGE_ROWS] - first, group_counts)] = keys[first:last]
        if top is not None:
            padded[:, width:] = top[group_owners]
        padded.partition(padded.shape[1] - k, axis=1)
        if top is None:
            merged.append(padded[:, padded.shape[1] - k:])
        else:
            top[group_owners] = padded[:, padded.shape[1] - k:]
    return np.concatenate(merged) if top is None else top


def _first_block_topk(scores, start, k, scratch, top):
    """top[:] = the exact top-k keys of each row of the first score block (scores has >= k columns).

    Done FIRST_BLOCK_ROWS rows at a time, so the dense candidate arrays stay small."""
    width = scores.shape[1]
    for lo in range(0, len(scores), FIRST_BLOCK_ROWS):
        rows_scores = scores[lo:lo + FIRST_BLOCK_ROWS]
        if width > k:
            part = scratch[:len(rows_scores), :width]
            np.copyto(part, rows_scores)
            part.partition(width - k, axis=1)
            kth = part[:, width - k]
        else:
            kth = rows_scores.min(axis=1)
        rows, cols = np.nonzero(rows_scores >= kth[:, None])   # >= keeps ties; the merge cuts to k
        top[lo:lo + len(rows_scores)] = _merge_candidates(
            None, rows, _score_keys(rows_scores[rows, cols], cols + start), k)


def _block_topk(queries, gallery, k, buffers):
    """Exact top-k keys (b, k) of queries (b, d) over gallery (n, d), k <= n, blockwise.

    Candidates above the running threshold are collected over several gallery blocks and merged
    into the top-k once they add up to about k/2 per query (re-partitioning the k kept keys after
    every block would cost as much as the GEMM); the threshold tightens at every merge.
    """
    scores_buffer, mask_buffer, scratch = buffers
    n = len(gallery)
    top = np.empty((len(queries), k), np.int64)
    pending_rows, pending_keys, pending = [], [], 0
    flush_at = max(1, len(queries) * k // 2)
    start = 0
    while start < n:
        stop = min(n, start + BLOCK_GALLERY, start + scores_buffer.shape[1]) if start else min(n, max(k, BLOCK_GALLERY))
        scores = scores_buffer[:len(queries), :stop - start]
        np.matmul(queries, gallery[start:stop].T, out=scores)
        if start == 0:
            # the k-th best of the first block bounds the final k-th best from below
            _first_block_topk(scores, start, k, scratch, top)
            threshold = _key_scores(top.min(axis=1))
        else:
            # later rows have larger indices: a score equal to the k-th best loses its tie
            mask = mask_buffer.reshape(-1)[:scores.size].reshape(scores.shape)
            np.greater(scores, threshold[:, None], out=mask)
            rows, cols = _true_positions(mask)
            if len(rows):
                pending_rows.append(rows)
                pending_keys.append(_score_keys(scores[rows, cols], cols + start))
                pending += len(rows)
        start = stop
        if pending and (pending >= flush_at or start >= n):
            rows, keys = np.concatenate(pending_rows), np.concatenate(pending_keys)
            order = np.argsort(rows, kind="stable")
            top = _merge_candidates(top, rows[order], keys[order], k)
            threshold = _key_scores(top.min(axis=1))
            pending_rows, pending_keys, pending = [], [], 0
    return top


class BlockedSearch:
    """Worker threads (one per core, each with a one-thread sgemm) and their reused buffers."""

    def __init__(self, workers=None):
        self.workers = _worker_count() if workers is None else workers
        self.pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None
        self.local = threading.local()

    def close(self):
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None

    def _buffers(self, k):
        width = max(BLOCK_GALLERY, k)
        buffers = getattr(self.local, "buffers", None)
        if buffers is None or buffers[0].shape[1] < width:
            if self.workers > 1:
                _BLAS_THREADS_LOCAL(1)
            buffers = (np.empty((BLOCK_QUERIES, width), np.float32), np.empty(BLOCK_QUERIES * BLOCK_GALLERY, bool),
                       np.empty((FIRST_BLOCK_ROWS, width), np.float32))
            self.local.buffers = buffers
        return buffers

    def knn(self, queries, gallery, k):
        """Exact inner-product top-k, ordered by score desc then gallery row asc (ties exact).

        ``gallery`` must be a C-contiguous float32 array of fewer than 2**32 rows.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        n = len(gallery)
        if n >= 1 << 32:
            raise ValueError("blocked search: search galleries of 2**32 rows or more in chunks")
        k = min(k, n)
        out_keys = np.empty((len(queries), k), np.int64)
        block = max(1, min(BLOCK_QUERIES, -(-len(queries) // self.workers)))

        def run(lo):
            out_keys[lo:lo + block] = _block_topk(queries[lo:lo + block], gallery, k, self._buffers(k))

        if self.pool is None:
            for lo in range(0, len(queries), block):
                run(lo)
        else:
            for job in [self.pool.submit(run, lo) for lo in range(0, len(queries), block)]:
                job.result()
        np.negative(out_keys, out=out_keys)   # keys are > INT64_MIN: no overflow
        out_keys.sort(axis=1)
        np.negative(out_keys, out=out_keys)   # now descending: score desc, row asc
        scores = _key_scores(out_keys)
        np.bitwise_and(out_keys, _LOW32, out=out_keys)
        np.subtract(_LOW32, out_keys, out=out_keys)
        return scores, out_keys


def blocked_knn(queries, gallery, k):
    """``BlockedSearch().knn`` with a pool of its own (see there)."""
    searcher = BlockedSearch()
    try:
        return searcher.knn(queries, gallery, k)
    finally:
        searcher.close()


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
        self.blocked = None if n_gpus else BlockedSearch()

    def close(self):
        if self.blocked is not None:
            self.blocked.close()

    @staticmethod
    def _gpu_flat_index(gallery, chunk_size, n_gpus):
        index = _to_gpu(faiss.IndexFlatIP(gallery.shape[1]), n_gpus)
        for start in range(0, len(gallery), chunk_size):
            index.add(_as_float32_rows(gallery, start, start + chunk_size))
        return index

    def search(self, queries, k):
        if self.gpu_index is not None:
            return self.gpu_index.search(queries, k)
        if self.whole_gallery is not None:
            return self.blocked.knn(queries, self.whole_gallery, k)
        best = None
        for start in range(0, len(self.gallery), self.chunk_size):
            rows = _as_float32_rows(self.gallery, start, start + self.chunk_size)
            scores, indices = self.blocked.knn(queries, rows, min(k, len(rows)))
            indices = np.where(indices >= 0, indices + start, -1)
            best = (scores, indices) if best is None else merge_topk(*best, scores, indices, k)
        return best


class ApproximateSearcher:
    """A trained Faiss index (IVF, PQ, HNSW, ...) over the gallery, inner-product metric."""

    def __init__(self, gallery, index_factory, nprobe=None, params=None, train_size=DEFAULT_TRAIN_SIZE,
                 chunk_size=DEFAULT_GALLERY_CHUNK, n_gpus=0, seed=0, show_progress=True):
        dim = gallery.shape[1]
        index = faiss.index_factory(dim, index_factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            index.train(self._training_sample(gallery, train_size, seed))
        index = _to_gpu(index, n_gpus)
        for start in tqdm(range(0, len(gallery), chunk_size), desc="index gallery", disable=not show_progress):
            index.add(_as_float32_rows(gallery, start, start + chunk_size))
        space = faiss.GpuParameterSpace() if n_gpus and hasattr(faiss, "GpuParameterSpace") else faiss.ParameterSpace()
        if nprobe is not None:
            space.set_index_parameter(index, "nprobe", int(nprobe))
        if params:
            space.set_index_parameters(index, params)   # e.g. "efSearch=128" for HNSW
        self.index = index

    @staticmethod
    def _training_sample(gallery, train_size, seed):
        n = len(gallery)
        if n <= train_size:
            return _as_float32_rows(gallery, 0, n)
        rows = np.sort(np.random.default_rng(seed).choice(n, size=train_size, replace=False))
        sample = gallery.take_rows(rows) if hasattr(gallery, "take_rows") else gallery[rows]
        return np.ascontiguousarray(sample, dtype=np.float32)

    def search(self, queries, k):
        return self.index.search(queries, k)

    def close(self):
        pass


def _clamp_k(k, gallery_size, n_gpus):
    if k > gallery_size:
        warnings.warn(f"k={k} is larger than the gallery ({gallery_size} items); using k={gallery_size}")
        k = gallery_size
    if n_gpus and k > MAX_GPU_K:
        raise ValueError(f"Faiss on GPU supports k <= {MAX_GPU_K}, got k={k}")
    return k


def iter_search(query_feats, gallery_feats, k, index_factory=None, query_chunk=DEFAULT_QUERY_CHUNK,
                chunk_size=DEFAULT_GALLERY_CHUNK, nprobe=None, params=None, use_gpu="auto",
                train_size=DEFAULT_TRAIN_SIZE, seed=0, show_progress=True):
    """Yield ``(start, scores (q, k) float32, indices (q, k) int64)`` per chunk of queries.

    ``indices`` are gallery row numbers (-1 where an approximate index found fewer than k).
    """
    if query_feats.shape[1] != gallery_feats.shape[1]:
        raise ValueError(f"query dim {query_feats.shape[1]} != gallery dim {gallery_feats.shape[1]}")
    if len(gallery_feats) == 0:
        raise ValueError("the gallery is empty")
    n_gpus = _gpu_count(use_gpu)
    k = _clamp_k(k, len(gallery_feats), n_gpus)
    if index_factory in (None, "", "Flat", "exact"):
        searcher = ExactSearcher(gallery_feats, chunk_size, n_gpus)
    else:
        searcher = ApproximateSearcher(gallery_feats, index_factory, nprobe, params, train_size,
                                       chunk_size, n_gpus, seed, show_progress)
    n_queries = len(query_feats)
    try:
        with tqdm(total=n_queries, desc="search", unit="query", disable=not show_progress) as progress:
            for start in range(0, n_queries, query_chunk):
                queries = _as_float32_rows(query_feats, start, start + query_chunk)
                scores, indices = searcher.search(queries, k)
                yield start, *sort_results(scores, indices.astype(np.int64, copy=False))
                progress.update(len(queries))
    finally:
        searcher.close()


def search(query_feats, gallery_feats, k, index_factory=None, chunk_size=DEFAULT_GALLERY_CHUNK, nprobe=None,
           use_gpu="auto", train_size=DEFAULT_TRAIN_SIZE, query_chunk=DEFAULT_QUERY_CHUNK, params=None, seed=0,
           show_progress=True):
    """Top-k search of all queries; returns (scores float32 (Q, k), indices int64 (Q, k)).

    See ``iter_search``; this collects its chunks (use that to keep memory at one chunk).
    """
    parts = list(iter_search(query_feats, gallery_feats, k, index_factory, query_chunk=query_chunk,
                             chunk_size=chunk_size, nprobe=nprobe, params=params, use_gpu=use_gpu,
                             train_size=train_size, seed=seed, show_progress=show_progress))
    if not parts:
        k = min(k, len(gallery_feats))
        return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
    return np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])
