"""The order every searcher's results end in: score descending, ties by gallery row ascending."""

import numpy as np


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


def sorted_results(scores, indices):
    """A searcher's (scores, indices) as float32 and int64, in ``sort_results`` order."""
    return sort_results(np.asarray(scores, np.float32), np.asarray(indices).astype(np.int64, copy=False))


def merge_topk(scores_a, indices_a, scores_b, indices_b, k):
    """Merge two top-k lists per row into one (score desc, index asc; -1 entries last)."""
    scores = np.concatenate([scores_a, scores_b], axis=1)
    indices = np.concatenate([indices_a, indices_b], axis=1)
    scores = np.where(indices < 0, -np.inf, scores).astype(np.float32)
    order = np.lexsort((np.where(indices < 0, np.iinfo(np.int64).max, indices), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(indices, order, 1)
