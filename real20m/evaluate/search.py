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
in exact search this holds at the k-th place too, so chunked and one-shot
results are identical (approximate indexes keep Faiss's choice there).

Exact search on GPUs streams the gallery exactly as on the CPU: each chunk goes to a GPU only
for its own ``faiss.knn_gpu`` call (one chunk resident per GPU, chunks dealt round-robin over
the GPUs), and the per-chunk top-k lists are merged by the same ``merge_topk``. Its scores
differ from the CPU's by float rounding only (another GEMM order).
"""

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from real20m.evaluate.faiss_backend import faiss_description, import_faiss, resolve_search_device
from real20m.evaluate.feature_io import read_rows
from real20m.evaluate.index import DEFAULT_TRAIN_SIZE, ShardedIndex, read_index_meta

logger = logging.getLogger(__name__)

faiss = import_faiss()

DEFAULT_QUERY_CHUNK = 512
DEFAULT_GALLERY_CHUNK = 1 << 20
MAX_GPU_K = 2048   # Faiss GPU top-k limit
# Gallery rows per BLAS call inside faiss.knn: Faiss's default (1024) leaves the GEMM ~10% slower
# than one big GEMM at k=1000. Queries per BLAS call: Faiss keeps a top-k reservoir of 2k entries
# for each query of the call, 6 MB at 256 queries and k=1000, beside a 4 MB score block.
BLAS_DATABASE_ROWS = 4096
BLAS_QUERY_ROWS = 256
TIE_DEPTH = 16   # extra results per query that exact search asks for, to settle ties at the cut-off


@contextlib.contextmanager
def _blas_blocks(query_rows, database_rows):
    """Set Faiss's BLAS block sizes for the duration of a search, then restore them."""
    previous = faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs
    faiss.cvar.distance_compute_blas_query_bs = query_rows
    faiss.cvar.distance_compute_blas_database_bs = database_rows
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs = previous


def is_exact(index_factory):
    return index_factory in (None, "", "Flat", "exact")


def _faiss_cpu_knn(queries, rows, depth):
    with _blas_blocks(BLAS_QUERY_ROWS, BLAS_DATABASE_ROWS):
        return faiss.knn(queries, rows, depth, metric=faiss.METRIC_INNER_PRODUCT)


def exact_knn(queries, rows, k, knn=_faiss_cpu_knn, max_depth=None):
    """``knn`` (default faiss.knn: one fused GEMM + heap pass), made deterministic at the k-th place too.

    Faiss's heap keeps an arbitrary one of several items tied at the cut-off; TIE_DEPTH extra results
    per query reveal such rows, and hold the whole tie unless it runs past them (then the row is
    scored again in full). Rare: it takes identical scores, e.g. duplicate gallery vectors.
    ``knn(queries, rows, depth)`` returns (scores, indices) of the ``depth`` best rows; ``max_depth``
    caps what it can return (the GPU's k limit: at k = max_depth the cut-off keeps Faiss's choice).
    """
    depth = min(k + TIE_DEPTH, len(rows), max_depth or len(rows))
    scores, indices = knn(queries, rows, depth)
    if depth <= k:
        return scores, indices
    tied = np.flatnonzero(scores[:, k] == scores[:, k - 1])
    beyond = tied[scores[tied, -1] == scores[tied, k - 1]] if depth < len(rows) else tied[:0]
    for row in beyond:
        row_scores = rows @ queries[row]
        order = np.lexsort((np.arange(len(rows)), -row_scores))[:depth]
        scores[row], indices[row] = row_scores[order], order
    sort_results(scores, indices, tied)
    return scores[:, :k], indices[:, :k]


def cpu_block_knn(queries, rows, k, worker=0):
    """Exact top-k of one gallery block on the CPU (``worker`` is unused: one CPU worker)."""
    return exact_knn(queries, rows, k)


class GpuBlockKnn:
    """Exact top-k of one gallery block on GPU ``worker`` with ``faiss.knn_gpu``.

    knn_gpu copies the block to the GPU for the call and frees it on return, so a GPU holds one
    block (plus Faiss's temporary memory) however large the gallery is; no index keeps it.
    """

    def __init__(self, n_gpus):
        self.resources = [faiss.StandardGpuResources() for _ in range(n_gpus)]

    def _knn(self, device):
        def knn(queries, rows, depth):
            return faiss.knn_gpu(self.resources[device], queries, rows, depth,
                                 metric=faiss.METRIC_INNER_PRODUCT, device=device)
        return knn

    def __call__(self, queries, rows, k, worker=0):
        return exact_knn(queries, rows, k, knn=self._knn(worker), max_depth=MAX_GPU_K)


def stream_topk(queries, gallery, k, chunk_size, block_knn=cpu_block_knn, workers=1):
    """Top-k over ``gallery`` read ``chunk_size`` rows at a time, per-block top-k lists merged.

    ``block_knn(queries, rows, k, worker)`` searches one block; block ``b`` goes to worker
    ``b % workers`` (one thread per worker, e.g. per GPU, each holding one block at a time).
    ``merge_topk`` orders by (score desc, index asc), a total order, so the result does not
    depend on the number of workers or on the order blocks finish in.
    """
    starts = range(0, len(gallery), chunk_size)

    def run(worker):
        best = None
        for start in starts[worker::workers]:
            rows = read_rows(gallery, start, start + chunk_size)
            scores, indices = block_knn(queries, rows, min(k, len(rows)), worker)
            indices = np.where(indices >= 0, indices + start, -1)
            best = (scores, indices) if best is None else merge_topk(*best, scores, indices, k)
        return best

    if workers == 1:
        return run(0)
    with ThreadPoolExecutor(workers) as pool:   # Faiss releases the GIL while it searches
        parts = [part for part in pool.map(run, range(workers)) if part is not None]
    best = parts[0]
    for part in parts[1:]:
        best = merge_topk(*best, *part, k)
    return best


def gallery_ids_at(gallery_ids, rows):
    """Gallery ids of search result rows; -1 (no result: past the gallery's end) stays -1."""
    ids = gallery_ids[rows]   # row -1 reads the last id, replaced below
    ids[rows < 0] = -1
    return ids


def sort_results(scores, indices, rows=None):
    """Order every row (or only ``rows``) by score descending, then index ascending (deterministic ties).

    Only rows that actually contain a tie are re-sorted, all in one lexsort; the rest are already ordered.
    """
    part = scores if rows is None else scores[rows]
    ties = np.flatnonzero(np.any(part[:, 1:] == part[:, :-1], axis=1))
    if rows is not None:
        ties = rows[ties]
    if len(ties):
        order = np.lexsort((indices[ties], -scores[ties]), axis=1)
        scores[ties] = np.take_along_axis(scores[ties], order, 1)
        indices[ties] = np.take_along_axis(indices[ties], order, 1)
    return scores, indices


def _sorted(scores, indices):
    """A searcher's (scores, indices), indices as int64, in ``sort_results`` order."""
    return sort_results(scores, indices.astype(np.int64, copy=False))


def merge_topk(scores_a, indices_a, scores_b, indices_b, k):
    """Merge two top-k lists per row into one (score desc, index asc; -1 entries last)."""
    scores = np.concatenate([scores_a, scores_b], axis=1)
    indices = np.concatenate([indices_a, indices_b], axis=1)
    scores = np.where(indices < 0, -np.inf, scores).astype(np.float32)
    order = np.lexsort((np.where(indices < 0, np.iinfo(np.int64).max, indices), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(indices, order, 1)


class ExactSearcher:
    """Brute-force inner product, gallery streamed in chunks of ``chunk_size`` rows.

    On the CPU, or over ``n_gpus`` GPUs (``block_knn`` is the per-block search, a
    ``GpuBlockKnn`` then; tests may replace it to watch the blocks go by).
    """

    def __init__(self, gallery, chunk_size=DEFAULT_GALLERY_CHUNK, n_gpus=0):
        self.gallery = gallery
        self.chunk_size = chunk_size
        self.n_gpus = min(n_gpus, -(-len(gallery) // chunk_size))   # a GPU with no block would idle
        in_place = (not n_gpus and isinstance(gallery, np.ndarray) and gallery.dtype == np.float32
                    and gallery.flags.c_contiguous and len(gallery) <= chunk_size)
        self.whole_gallery = gallery if in_place else None
        self.block_knn = GpuBlockKnn(self.n_gpus) if self.n_gpus else cpu_block_knn

    def search(self, queries, k):
        if self.whole_gallery is not None:
            return exact_knn(queries, self.whole_gallery, k)
        return stream_topk(queries, self.gallery, k, self.chunk_size, self.block_knn, max(self.n_gpus, 1))

    def gpu_ids(self):
        return list(range(self.n_gpus))


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
        logger.info("k=%d is larger than the gallery (%d items); using k=%d", k, gallery_size, gallery_size)
        k = gallery_size
    if n_gpus and k > MAX_GPU_K:
        raise ValueError(f"Faiss on GPU supports k <= {MAX_GPU_K}, got k={k}")
    return k


def iter_search(query_feats, gallery_feats, k, index_factory=None, query_chunk=DEFAULT_QUERY_CHUNK,
                chunk_size=DEFAULT_GALLERY_CHUNK, nprobe=None, params=None, use_gpu="auto",
                train_size=DEFAULT_TRAIN_SIZE, seed=0, show_progress=True, shards=None, save_index=None,
                load_index=None, gallery_description=None, info=None):
    """Yield ``(start, scores (q, k) float32, indices (q, k) int64)`` per chunk of queries.

    ``indices`` are gallery row numbers (-1 where an approximate index found fewer than k).
    ``use_gpu``: ``auto`` / ``always`` / ``never`` (or True / False), see ``faiss_backend``.
    Approximate search only (an ``index_factory`` other than exact): ``shards`` splits the gallery
    over that many sub-indexes; ``save_index`` / ``load_index`` name a folder to write the built
    index to / read it from, checked against ``gallery_description`` (see ``index.describe_gallery``).
    A dict ``info`` is filled, before the first chunk, with what ran: ``index_factory`` ("Flat"
    for exact), ``device`` ("cpu" or "cuda"), ``num_gpus``, ``device_note`` (why ``auto`` chose
    the CPU, else None), ``faiss_version`` and ``faiss_build`` ("cpu" or "gpu").
    """
    if query_feats.shape[1] != gallery_feats.shape[1]:
        raise ValueError(f"query dim {query_feats.shape[1]} != gallery dim {gallery_feats.shape[1]}")
    if len(gallery_feats) == 0:
        raise ValueError("the gallery is empty")
    if load_index and is_exact(index_factory):
        index_factory = read_index_meta(load_index)["index"]
    device = resolve_search_device(use_gpu, faiss)
    n_gpus = device.n_gpus
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
    if info is not None:
        used = len(searcher.gpu_ids())   # an approximate index may keep shards on the CPU
        info.update(index_factory="Flat" if is_exact(index_factory) else index_factory,
                    device="cuda" if used else "cpu", num_gpus=used, device_note=device.note,
                    **faiss_description(faiss))
    n_queries = len(query_feats)
    with tqdm(total=n_queries, desc="search", unit="query", disable=not show_progress) as progress:
        for start in range(0, n_queries, query_chunk):
            queries = read_rows(query_feats, start, start + query_chunk)
            # No local holds the results while suspended: the next chunk's search must not run
            # beside this chunk's (chunk, k) arrays once the caller has dropped them.
            yield start, *_sorted(*searcher.search(queries, k))
            progress.update(len(queries))


def search(query_feats, gallery_feats, k, index_factory=None, chunk_size=DEFAULT_GALLERY_CHUNK, nprobe=None,
           use_gpu="auto", train_size=DEFAULT_TRAIN_SIZE, query_chunk=DEFAULT_QUERY_CHUNK, params=None, seed=0,
           show_progress=True, shards=None, save_index=None, load_index=None, gallery_description=None,
           info=None):
    """Top-k search of all queries; returns (scores float32 (Q, k), indices int64 (Q, k)).

    See ``iter_search``; this collects its chunks (use that to keep memory at one chunk).
    """
    parts = list(iter_search(query_feats, gallery_feats, k, index_factory, query_chunk=query_chunk,
                             chunk_size=chunk_size, nprobe=nprobe, params=params, use_gpu=use_gpu,
                             train_size=train_size, seed=seed, show_progress=show_progress, shards=shards,
                             save_index=save_index, load_index=load_index,
                             gallery_description=gallery_description, info=info))
    if not parts:
        k = min(k, len(gallery_feats))
        return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
    return np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])
