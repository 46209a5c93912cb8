"""Recall@10 as the gallery grows from the ground-truth items alone to the whole gallery.

The ground-truth rows are the gallery rows whose id is a GT doc of an evaluated query (a query in
the query set that has ground truth). Every other row is a distractor. Step ``f`` keeps every
ground-truth row plus the first ``round(f * m)`` of the m distractors in one seeded permutation,
so each step's gallery holds the previous one's. Each step is searched exactly (the ``exact``
backend, streaming the kept rows in chunks: no sub-gallery is copied whole) and scored by the
same accumulator as the evaluation, so the last step (f = 1) is the evaluation's recall@10
whenever its own search is exact too.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from real20m.evaluate.feature_set import FeatureSet, read_sample
from real20m.evaluate.metrics import RetrievalMetrics
from real20m.evaluate.search import gallery_ids_at, iter_search
from real20m.evaluate.search_config import SearchConfig
from real20m.evaluate.searchers import open_searcher

CURVE_K = 10
DISTRACTOR_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class DistractorCurveSettings:
    """Which share of the distractors each step adds, and the seed of their order."""

    fractions: tuple[float, ...] = DISTRACTOR_FRACTIONS
    seed: int = 0


@dataclass(frozen=True)
class CurvePoint:
    fraction: float      # share of the distractors in this step's gallery
    gallery_size: int    # rows searched: every ground-truth row plus the distractors kept
    recall: float        # Recall@10 over the evaluated queries

    def record(self) -> dict:
        return {"distractor_fraction": self.fraction, "gallery_size": self.gallery_size,
                f"recall@{CURVE_K}": self.recall}


class RowSubset:
    """Chosen rows (ascending) of a feature array, read on demand a row slice at a time, as a searcher reads."""

    def __init__(self, array, rows: np.ndarray):
        self.array = array
        self.rows = rows
        self.shape = (len(rows), array.shape[1])
        self.dtype = np.dtype(np.float32)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, rows: slice) -> np.ndarray:
        return read_sample(self.array, self.rows[rows])


def ground_truth_rows(gallery_ids: np.ndarray, ground_truth, query_ids: np.ndarray) -> np.ndarray:
    """Gallery rows holding a GT doc of one of ``query_ids``, ascending."""
    docs = {doc for query in query_ids.tolist() for doc in ground_truth.get(query, ())}
    return np.flatnonzero(np.isin(gallery_ids, np.fromiter(docs, np.int64, len(docs))))


def gallery_steps(gallery_ids: np.ndarray, ground_truth, query_ids: np.ndarray,
                  settings: DistractorCurveSettings) -> list[np.ndarray]:
    """The gallery rows of each step (see the module docstring), each ascending."""
    kept = ground_truth_rows(gallery_ids, ground_truth, query_ids)
    distractors = np.setdiff1d(np.arange(len(gallery_ids)), kept)
    order = np.random.default_rng(settings.seed).permutation(distractors)
    return [np.sort(np.concatenate([kept, order[:round(fraction * len(order))]]))
            for fraction in settings.fractions]


def _recall_at_k(queries: FeatureSet, gallery: FeatureSet, rows: np.ndarray, ground_truth, search: SearchConfig):
    """Recall@CURVE_K of ``queries`` over the gallery rows ``rows``, exact search."""
    if not len(rows):
        return 0.0   # no GT doc is in the gallery: nothing can be found
    step_ids = gallery.ids[rows]
    metrics = RetrievalMetrics(ground_truth, step_ids, ks=(CURVE_K,))
    feats = gallery.feats if len(rows) == len(gallery.ids) else RowSubset(gallery.feats, rows)
    searcher = open_searcher(feats, search, depth=CURVE_K)
    for start, _, indices in iter_search(queries.feats, searcher, CURVE_K, search.query_chunk, show_progress=False):
        retrieved = np.full((len(indices), CURVE_K), -1, np.int64)   # a gallery under K items: no result past it
        retrieved[:, :indices.shape[1]] = gallery_ids_at(step_ids, indices)
        metrics.update(queries.ids[start:start + len(indices)], retrieved)
    return metrics.result().at("recall").get(CURVE_K, 0.0)


def distractor_curve(queries: FeatureSet, gallery: FeatureSet, ground_truth, settings: DistractorCurveSettings,
                     search: SearchConfig) -> list[CurvePoint]:
    """Recall@10 at each step of ``settings``; only queries with ground truth are searched.

    ``search`` gives the chunk sizes and device (its index is ignored: every step is exact).
    """
    with_gt = np.flatnonzero([query in ground_truth for query in queries.ids.tolist()])
    evaluated = FeatureSet(queries.ids[with_gt], RowSubset(queries.feats, with_gt), queries.source)
    exact = SearchConfig(use_gpu=search.use_gpu, chunk_size=search.chunk_size, query_chunk=search.query_chunk,
                         show_progress=False)
    steps = gallery_steps(gallery.ids, ground_truth, evaluated.ids, settings)
    return [CurvePoint(fraction, len(rows), _recall_at_k(evaluated, gallery, rows, ground_truth, exact))
            for fraction, rows in zip(settings.fractions, steps)]
