"""Top-k inner-product search of query features over a gallery, through a searcher.

``iter_search`` feeds the queries to a searcher (``real20m.evaluate.searchers``) chunk by chunk
and yields per chunk, so callers can score results without holding the full (Q, k) matrices;
``search`` builds the searcher a ``SearchConfig`` describes and collects every chunk. Results are
ordered by score (descending), ties by gallery index (ascending).
"""

import logging

import numpy as np
from tqdm import tqdm

from real20m.evaluate.feature_io import read_rows
from real20m.evaluate.search_config import DEFAULT_QUERY_CHUNK, SearchConfig
from real20m.evaluate.searchers import open_searcher
from real20m.evaluate.searchers.topk import sorted_results

logger = logging.getLogger(__name__)


def gallery_ids_at(gallery_ids, rows):
    """Gallery ids of search result rows; -1 (no result: past the gallery's end) stays -1."""
    ids = gallery_ids[rows]   # row -1 reads the last id, replaced below
    ids[rows < 0] = -1
    return ids


def _clamp_k(k, gallery_size):
    if k > gallery_size:
        logger.info("k=%d is larger than the gallery (%d items); using k=%d", k, gallery_size, gallery_size)
        k = gallery_size
    return k


def iter_search(queries, searcher, k, query_chunk=DEFAULT_QUERY_CHUNK, show_progress=True):
    """Yield ``(start, scores (q, k) float32, indices (q, k) int64)`` per chunk of ``query_chunk`` queries.

    ``indices`` are gallery row numbers (-1 where an approximate index found fewer than k); k is
    cut to the gallery's size.
    """
    if queries.shape[1] != searcher.dim:
        raise ValueError(f"query dim {queries.shape[1]} != gallery dim {searcher.dim}")
    k = _clamp_k(k, searcher.size)
    with tqdm(total=len(queries), desc="search", unit="query", disable=not show_progress) as progress:
        for start in range(0, len(queries), query_chunk):
            chunk = read_rows(queries, start, start + query_chunk)
            # No local holds the results while suspended: the next chunk's search must not run
            # beside this chunk's (chunk, k) arrays once the caller has dropped them.
            yield start, *sorted_results(*searcher.search(chunk, k))
            progress.update(len(chunk))


def search_all(queries, searcher, k, query_chunk=DEFAULT_QUERY_CHUNK, show_progress=True):
    """Every chunk of ``iter_search`` in one (scores float32 (Q, k), indices int64 (Q, k)) pair."""
    parts = list(iter_search(queries, searcher, k, query_chunk, show_progress))
    if not parts:
        k = min(k, searcher.size)
        return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
    return np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def search(queries, gallery, k, config=SearchConfig()):
    """Top-k search of all queries over ``gallery`` with the searcher ``config`` describes;
    returns (scores float32 (Q, k), indices int64 (Q, k)). Use ``iter_search`` to keep memory at one chunk."""
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"query dim {queries.shape[1]} != gallery dim {gallery.shape[1]}")
    searcher = open_searcher(gallery, config, depth=k)
    return search_all(queries, searcher, k, config.query_chunk, config.show_progress)
