"""The retrieval metrics, one registry entry each: how a metric is computed and where it is shown.

A metric is a function ``total(hits, k)`` returning the sum, over one chunk of queries, of its
per-query value at K (or None where the metric is undefined, e.g. a chance level with an empty
gallery); the accumulator adds the chunks up and divides by the number of queries. Its values are
kept by name and K (``{"recall": {10: 0.41}}``); ``metrics.json`` spells them ``recall@10``
(``metric_key``). ``Display`` says which of the printed table, the HTML report, recall.png and
validation's log line show it. The table, report, plot and validation iterate ``METRICS`` in its
order, so a new metric is one ``@register_metric`` function here or in any module imported
before the evaluation runs.

A metric that is a mean of one value per query (Recall@K, hit@K) is registered with
``@register_per_query_metric`` as ``per_query(hits, k) -> (q,) values`` instead: the evaluation then
keeps those values (one float per query and K) and reports a bootstrap interval of the mean too.

The built-in metrics are those the Real20M paper defines (see metrics.py) and the chance level of
Recall@K and hit@K for a uniformly random ranking of the gallery.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class RankedHits:
    """The ground-truth hits of one chunk of queries, what every metric is computed from.

    rows / ranks: query row and 0-based rank of every retrieved GT doc, sorted by row then rank;
    gt_sizes: (q,) distinct GT docs of each query; in_gallery: (q,) how many of them the gallery
    holds; gallery_size: distinct ids in the gallery.
    """

    rows: np.ndarray
    ranks: np.ndarray
    gt_sizes: np.ndarray
    in_gallery: np.ndarray
    gallery_size: int
    # Recall, hit and mAP at one K share the same counts: computed once per K.
    _per_k: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_queries(self) -> int:
        return len(self.gt_sizes)

    @functools.cached_property
    def precision_at_hit(self) -> np.ndarray:
        """Precision at the rank of each hit: its 1-based position among its row's hits over its rank."""
        row_starts = np.searchsorted(self.rows, self.rows, side="left")
        hits_so_far = np.arange(1, len(self.rows) + 1) - row_starts
        return hits_so_far / (self.ranks + 1)

    def _within(self, k: int) -> np.ndarray:
        return self._cached(("within", k), lambda: self.ranks < k)

    def hits_within(self, k: int) -> np.ndarray:
        """(q,) number of GT docs in each query's top k."""
        return self._cached(("hits", k), lambda: np.bincount(self.rows[self._within(k)], minlength=self.num_queries))

    def first_hit_rank(self, not_found: int) -> np.ndarray:
        """(q,) 1-based rank of each query's first retrieved GT doc; ``not_found`` where none was retrieved."""
        first = np.full(self.num_queries, not_found, np.int64)
        rows, first_of_row = np.unique(self.rows, return_index=True)   # hits are sorted by row, then rank
        first[rows] = self.ranks[first_of_row] + 1
        return first

    def precision_sum_within(self, k: int) -> np.ndarray:
        """(q,) sum of the precision at each hit rank within the top k."""
        within = self._within(k)
        return self._cached(("precision", k), lambda: np.bincount(
            self.rows[within], weights=self.precision_at_hit[within], minlength=self.num_queries))

    def _cached(self, key: tuple, compute: Callable[[], np.ndarray]) -> np.ndarray:
        if key not in self._per_k:
            self._per_k[key] = compute()
        return self._per_k[key]


@dataclass(frozen=True)
class Display:
    """Where a metric appears besides metrics.json (which holds every metric).

    column: its heading in the printed table (None: not in the table), ``width`` characters wide;
    in_report: also a column of the HTML report's table; in_plot: a line of recall.png;
    log_label: validation logs it (log line ``<label>@K``, TensorBoard ``val/<task>/<name>@K``);
    chance: the metric whose value at the same K is its chance level in that log line.
    """

    column: str | None = None
    width: int = 10
    in_report: bool = False
    in_plot: bool = False
    log_label: str | None = None
    chance: str | None = None


@dataclass(frozen=True)
class Metric:
    name: str
    total: Callable[[RankedHits, int], float | None]
    ks: tuple[int, ...] | None = None   # None: every K the evaluation reports
    display: Display = Display()
    # Its (q,) per-query values, whose mean it is; such a metric also gets a bootstrap interval.
    per_query: Callable[[RankedHits, int], np.ndarray] | None = None


METRICS: dict[str, Metric] = {}


def _add_metric(metric: Metric) -> None:
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is already registered")
    METRICS[metric.name] = metric


def _sorted_ks(ks: tuple[int, ...] | None) -> tuple[int, ...] | None:
    return None if ks is None else tuple(sorted(set(ks)))


def register_metric(name: str, ks: tuple[int, ...] | None = None, display: Display = Display()):
    """Decorator: add ``total(hits, k) -> float | None`` as metric ``name`` (see the module docstring)."""
    def add(total: Callable[[RankedHits, int], float | None]) -> Callable[[RankedHits, int], float | None]:
        _add_metric(Metric(name, total, _sorted_ks(ks), display))
        return total
    return add


def register_per_query_metric(name: str, ks: tuple[int, ...] | None = None, display: Display = Display()):
    """Decorator: add ``per_query(hits, k) -> (q,) values`` as metric ``name``, their mean over the
    queries, with a bootstrap interval (see the module docstring)."""
    def add(per_query: Callable[[RankedHits, int], np.ndarray]) -> Callable[[RankedHits, int], np.ndarray]:
        _add_metric(Metric(name, lambda hits, k: per_query(hits, k).sum(), _sorted_ks(ks), display, per_query))
        return per_query
    return add


def metric_key(name: str, k: int) -> str:
    """The metric's key in metrics.json and validation's history: ``recall@10``."""
    return f"{name}@{k}"


# Order = the columns of the table and the order of the keys in metrics.json.

@register_per_query_metric("recall", display=Display("Recall@K", in_report=True, in_plot=True, log_label="R",
                                                      chance="chance_recall"))
def recall(hits: RankedHits, k: int) -> np.ndarray:
    """GT docs in the top K over all GT docs of the query (those missing from the gallery too)."""
    return hits.hits_within(k) / np.maximum(hits.gt_sizes, 1)


@register_per_query_metric("hit", display=Display("hit@K", in_report=True, in_plot=True))
def hit(hits: RankedHits, k: int) -> np.ndarray:
    """1 if at least one GT doc is in the top K."""
    return (hits.hits_within(k) > 0).astype(np.float64)


@register_metric("map", display=Display("mAP@K", in_report=True, in_plot=True))
def average_precision(hits: RankedHits, k: int) -> float:
    """Sum over hit ranks r <= K of precision@r, divided by min(|GT|, K)."""
    return (hits.precision_sum_within(k) / np.maximum(np.minimum(hits.gt_sizes, k), 1)).sum()


@register_metric("chance_recall", display=Display("chance R@K", width=11))
def chance_recall(hits: RankedHits, k: int) -> float | None:
    """(g / |GT|) * min(K, N) / N for g of the query's GT docs in a gallery of N distinct items."""
    n = hits.gallery_size
    if not n:
        return None
    return (hits.in_gallery / np.maximum(hits.gt_sizes, 1)).sum() * min(k, n) / n


@register_metric("chance_hit")
def chance_hit(hits: RankedHits, k: int) -> float | None:
    """1 - C(N - g, K) / C(N, K): at least one of g relevant items in the first K of a random ranking."""
    if not hits.gallery_size:
        return None
    counts, queries = np.unique(hits.in_gallery.astype(np.int64), return_counts=True)
    return sum(int(m) * _chance_hit(hits.gallery_size, int(g), k) for g, m in zip(counts, queries))


def _chance_hit(n: int, g: int, k: int) -> float:
    """P(at least one of g relevant items in the first k of a random ranking of n) = 1 - C(n-g, k) / C(n, k)."""
    k = min(k, n)
    if g == 0:
        return 0.0
    if n - g < k:
        return 1.0
    log_none = (math.lgamma(n - g + 1) - math.lgamma(n - g - k + 1)) - (math.lgamma(n + 1) - math.lgamma(n - k + 1))
    return 1.0 - math.exp(log_none)
