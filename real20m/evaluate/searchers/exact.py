"""Exact inner-product search, the gallery streamed in row chunks (backend ``exact``).

Each chunk is converted to contiguous float32 only while it is searched and the per-chunk top-k
lists are merged, so a float16 memory-mapped gallery of any size needs only one chunk in memory.
When the whole gallery is already a float32 array it is searched in place: one fused GEMM + heap
pass, no copy. Results are ordered by score (descending), ties by gallery index (ascending), at
the k-th place too, so chunked and one-shot results are identical.

On GPUs the gallery streams exactly as on the CPU: each chunk goes to a GPU only for its own
``faiss.knn_gpu`` call (one chunk resident per GPU, chunks dealt round-robin over the GPUs), and
the per-chunk top-k lists are merged by the same ``merge_topk``. Its scores differ from the CPU's
by float rounding only (another GEMM order).
"""

import contextlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from real20m.evaluate.faiss_backend import faiss_description, import_faiss
from real20m.evaluate.feature_io import read_rows
from real20m.evaluate.searchers.registry import EXACT_ONLY_ERROR, MAX_GPU_K, register_search_backend
from real20m.evaluate.searchers.topk import merge_topk, sort_results

# Gallery rows per BLAS call inside faiss.knn: Faiss's default (1024) leaves the GEMM ~10% slower
# than one big GEMM at k=1000. Queries per BLAS call: Faiss keeps a top-k reservoir of 2k entries
# for each query of the call, 6 MB at 256 queries and k=1000, beside a 4 MB score block.
BLAS_DATABASE_ROWS = 4096
BLAS_QUERY_ROWS = 256
TIE_DEPTH = 16   # extra results per query that exact search asks for, to settle ties at the cut-off


@contextlib.contextmanager
def _blas_blocks(faiss, query_rows, database_rows):
    """Set Faiss's BLAS block sizes for the duration of a search, then restore them."""
    previous = faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs
    faiss.cvar.distance_compute_blas_query_bs = query_rows
    faiss.cvar.distance_compute_blas_database_bs = database_rows
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs = previous


def _faiss_cpu_knn(queries, rows, depth):
    faiss = import_faiss()
    with _blas_blocks(faiss, BLAS_QUERY_ROWS, BLAS_DATABASE_ROWS):
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
        self.faiss = import_faiss()
        self.resources = [self.faiss.StandardGpuResources() for _ in range(n_gpus)]

    def _knn(self, device):
        def knn(queries, rows, depth):
            return self.faiss.knn_gpu(self.resources[device], queries, rows, depth,
                                      metric=self.faiss.METRIC_INNER_PRODUCT, device=device)
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


@register_search_backend("exact")
class ExactSearcher:
    """Brute-force inner product, gallery streamed in chunks of ``chunk_size`` rows.

    On the CPU, or over ``n_gpus`` GPUs (``block_knn`` is the per-block search, a
    ``GpuBlockKnn`` then; tests may replace it to watch the blocks go by).
    """

    index_format = None   # nothing to save: the gallery's features are the index

    def __init__(self, gallery, chunk_size, n_gpus=0, device_note=None):
        self.gallery = gallery
        self.size, self.dim = len(gallery), gallery.shape[1]
        self.chunk_size = chunk_size
        self.n_gpus = min(n_gpus, -(-len(gallery) // chunk_size))   # a GPU with no block would idle
        in_place = (not n_gpus and isinstance(gallery, np.ndarray) and gallery.dtype == np.float32
                    and gallery.flags.c_contiguous and len(gallery) <= chunk_size)
        self.whole_gallery = gallery if in_place else None
        self.block_knn = GpuBlockKnn(self.n_gpus) if self.n_gpus else cpu_block_knn
        self.device_note = device_note
        self.faiss = import_faiss()   # fails here, before any search, where Faiss is missing

    @classmethod
    def build(cls, gallery, config, device):
        if config.shards not in (None, 1) or config.save_index or config.load_index:
            raise ValueError(EXACT_ONLY_ERROR)
        return cls(gallery, config.chunk_size, device.n_gpus, device.note)

    @classmethod
    def load(cls, folder, config, device, expected):
        raise ValueError(EXACT_ONLY_ERROR)

    def search(self, queries, k):
        if self.whole_gallery is not None:
            return exact_knn(queries, self.whole_gallery, k)
        return stream_topk(queries, self.gallery, k, self.chunk_size, self.block_knn, max(self.n_gpus, 1))

    def describe(self):
        return {"index": "Flat", "device": "cuda" if self.n_gpus else "cpu", "num_gpus": self.n_gpus,
                "device_note": self.device_note, **faiss_description(self.faiss)}

    def save(self, folder, gallery_description):
        raise ValueError(EXACT_ONLY_ERROR)
