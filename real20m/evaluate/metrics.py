"""Retrieval metrics as the Real20M paper defines them.

For every query that is in the query set and has ground truth (GT):
  Recall@K = |GT docs in the top K| / |GT docs of the query|
  hit@K    = 1 if at least one GT doc is in the top K
  AP@K     = sum over hit ranks r <= K of precision@r, divided by min(|GT|, K)
and each metric is the mean over those queries.

The denominator |GT| counts ALL GT docs of a query, including docs that are
absent from the gallery (as the paper does); how many such docs there are is
reported in ``gt_docs_missing_from_gallery`` so a low recall can be explained.
If the gallery holds the same pid twice, later copies are dropped from each
retrieved list before scoring, so one doc never counts twice.
K values beyond the retrieved depth are not reported.

Chance level (``chance_recall@K``, ``chance_hit@K``) is the expected value of the same metric for
a uniformly random ranking of the gallery, so a figure can be read against its gallery size:
a query with g of its GT docs in a gallery of N distinct items has expected Recall@K
(g / |GT|) * min(K, N) / N and hit@K 1 - C(N - g, K) / C(N, K).

The median rank of the first GT doc (``median_first_gt_rank``) is over the same queries, 1-based;
a query with no GT doc in the retrieved depth D counts as rank D + 1.

With bootstrap settings the accumulator also keeps the per-query values of the metrics that have
them (Recall@K, hit@K: one float per query and K) and reports a percentile bootstrap interval of
each mean over queries (bootstrap.py).

Each metric is an entry of metric_registry.py; this module finds the GT hits of each chunk of
results, accumulates every registered metric over the chunks and prints the table.
"""
import itertools
from collections.abc import Mapping

import numpy as np

from real20m.evaluate.bootstrap import BootstrapSettings, MetricIntervals, percentile_intervals
from real20m.evaluate.metric_registry import METRICS, RankedHits, metric_key

DEFAULT_KS = (1, 5, 10, 20, 50, 100, 200, 500, 1000)
GT_BROADCAST_LIMIT = 64   # queries with more GT docs are matched with np.isin
INTERVAL_WIDTH = 18       # a printed interval column: "[0.3812, 0.4410]" and two spaces
COUNTERS_SHOWN = ("num_queries", "num_gallery", "queries_without_gt", "gt_queries_missing_from_query_set",
                  "gt_docs_missing_from_gallery", "duplicate_gallery_ids")


def _drop_repeated_ids(retrieved):
    """Replace later copies of an id within a row by -1 and move the -1 entries to the row end."""
    order = np.argsort(retrieved, axis=1, kind="stable")
    ranked = np.take_along_axis(retrieved, order, 1)
    repeated = (ranked[:, 1:] == ranked[:, :-1]) & (ranked[:, 1:] >= 0)
    rows, cols = np.nonzero(repeated)
    retrieved = retrieved.copy()
    retrieved[rows, order[rows, cols + 1]] = -1
    compact = np.argsort(retrieved < 0, axis=1, kind="stable")
    return np.take_along_axis(retrieved, compact, 1)


def _hit_positions(retrieved, gt_lists):
    """(row, rank) of every retrieved id that is a GT doc of its query, sorted by row then rank."""
    sizes = np.array([len(g) for g in gt_lists])
    hit_rows, hit_ranks = [], []
    # Group queries by GT size so a padded GT table wastes at most half its columns.
    for upper in (1, 2, 4, 8, 16, 32, GT_BROADCAST_LIMIT):
        group = np.flatnonzero((sizes <= upper) & (sizes > upper // 2))
        if len(group):
            rows, ranks = np.nonzero(_gt_matches(retrieved[group], [gt_lists[row] for row in group], upper))
            hit_rows.append(group[rows])
            hit_ranks.append(ranks)
    for row in np.flatnonzero(sizes > GT_BROADCAST_LIMIT):
        ranks = np.flatnonzero(np.isin(retrieved[row], gt_lists[row]))
        hit_rows.append(np.full(len(ranks), row))
        hit_ranks.append(ranks)
    rows = np.concatenate(hit_rows) if hit_rows else np.empty(0, np.int64)
    ranks = np.concatenate(hit_ranks) if hit_ranks else np.empty(0, np.int64)
    order = np.lexsort((ranks, rows))
    return rows[order], ranks[order]


def _gt_matches(retrieved, gt_lists, width):
    """(q, depth) bools: retrieved id among its query's GT docs (at most ``width`` each).

    One whole-matrix comparison per GT column: a (q, depth, width) broadcast reduced over its short
    last axis costs several times more.
    """
    padded = np.full((len(gt_lists), width), -2, np.int64)   # -2 never matches (-1 = no result)
    for i, docs in enumerate(gt_lists):
        padded[i, :len(docs)] = docs
    matches = retrieved == padded[:, :1]
    for column in range(1, width):
        matches |= retrieved == padded[:, column:column + 1]
    return matches


class RetrievalScores(Mapping):
    """The metrics of one evaluation: ``per_metric`` by metric name and K (``{"recall": {10: 0.41}}``)
    and the ``counters``. As a mapping it is the flat view metrics.json stores: ``recall@10``, ...
    K by K in the registry's order, then the counters. ``intervals`` (bootstrap intervals, when
    drawn) and ``median_first_gt_rank`` are beside the mapping: ``spread_record`` gives their keys."""

    def __init__(self, per_metric: dict[str, dict[int, float]], counters: dict[str, int],
                 intervals: MetricIntervals | None = None, median_first_gt_rank: float | None = None):
        self.per_metric = per_metric
        self.counters = counters
        self.intervals = intervals
        self.median_first_gt_rank = median_first_gt_rank
        self._flat = {**self.flat_values(), **counters}

    def at(self, name: str) -> dict[int, float]:
        """Metric ``name``'s values by K ({} when it was not scored)."""
        return self.per_metric.get(name, {})

    def ks(self, metrics) -> list[int]:
        """Every K at which one of ``metrics`` has a value, ascending."""
        return sorted(set().union(*(self.at(metric.name) for metric in metrics)))

    def flat_values(self) -> dict[str, float]:
        """The metric values alone under their metrics.json keys."""
        return {metric_key(metric.name, k): self.at(metric.name)[k] for k in self.ks(METRICS.values())
                for metric in METRICS.values() if k in self.at(metric.name)}

    def spread_record(self) -> dict:
        """metrics.json's keys beyond the flat view: ``median_first_gt_rank``, and with intervals
        ``bootstrap`` (samples, seed, level) and ``intervals`` (``{"recall@10": [lo, hi], ...}``)."""
        record = {"median_first_gt_rank": self.median_first_gt_rank}
        if self.intervals is not None:
            record["bootstrap"] = self.intervals.settings.record()
            record["intervals"] = {key: list(bounds) for key, bounds in self.flat_intervals().items()}
        return record

    def flat_intervals(self) -> dict[str, tuple[float, float]]:
        """The intervals under their metrics' metrics.json keys, in the flat view's order."""
        if self.intervals is None:
            return {}
        return {metric_key(metric.name, k): self.intervals.at(metric.name)[k] for k in self.ks(METRICS.values())
                for metric in METRICS.values() if k in self.intervals.at(metric.name)}

    def __getitem__(self, key):
        return self._flat[key]

    def __iter__(self):
        return iter(self._flat)

    def __len__(self):
        return len(self._flat)


class RetrievalMetrics:
    """Accumulates every registered metric over chunks of queries (see the module docstring)."""

    def __init__(self, ground_truth, gallery_ids, ks=DEFAULT_KS, bootstrap: BootstrapSettings | None = None):
        self.ground_truth = ground_truth
        gallery_ids = np.asarray(gallery_ids, dtype=np.int64)
        unique_gallery = np.unique(gallery_ids)
        self.has_duplicates = len(unique_gallery) < len(gallery_ids)
        self.counters = {
            "num_gallery": int(len(gallery_ids)),
            "duplicate_gallery_ids": int(len(gallery_ids) - len(unique_gallery)),
            "gt_docs_missing_from_gallery": self._count_missing_docs(ground_truth, unique_gallery),
            "num_queries": 0,
            "queries_without_gt": 0,
        }
        self.unique_gallery = unique_gallery
        self.ks = sorted(set(int(k) for k in ks))
        self.depth = None
        self.seen_gt_queries = set()
        self.sums = {}
        self.first_gt_ranks = []
        # (metric name, K) -> per-query value chunks, kept only to draw bootstrap intervals.
        self.bootstrap = bootstrap if bootstrap is not None and bootstrap.enabled else None
        self.per_query_values = {}

    @staticmethod
    def _count_missing_docs(ground_truth, unique_gallery):
        docs = np.fromiter(itertools.chain.from_iterable(ground_truth.values()), np.int64)
        return int(np.count_nonzero(~_in_sorted(unique_gallery, docs)))

    def update(self, query_ids, retrieved_ids):
        """Score one chunk: query_ids (q,), retrieved_ids (q, depth) gallery pids (-1 = none)."""
        query_ids = np.asarray(query_ids, dtype=np.int64)
        retrieved = np.asarray(retrieved_ids, dtype=np.int64)
        if retrieved.ndim != 2 or len(retrieved) != len(query_ids):
            raise ValueError(f"retrieved_ids must be (len(query_ids), depth), got {retrieved.shape}")
        if self.depth is None:
            self.depth = retrieved.shape[1]
        elif retrieved.shape[1] != self.depth:
            raise ValueError(f"retrieved depth changed from {self.depth} to {retrieved.shape[1]}")
        with_gt = np.array([q in self.ground_truth for q in query_ids.tolist()], dtype=bool)
        self.counters["queries_without_gt"] += int(np.count_nonzero(~with_gt))
        if not with_gt.all():
            query_ids, retrieved = query_ids[with_gt], retrieved[with_gt]
        self.counters["num_queries"] += len(query_ids)
        self.seen_gt_queries.update(query_ids.tolist())
        if self.has_duplicates:
            retrieved = _drop_repeated_ids(retrieved)
        gt_lists = [sorted(set(self.ground_truth[q])) for q in query_ids.tolist()]   # np.unique: 10x slower
        self._accumulate(retrieved, gt_lists)

    def _accumulate(self, retrieved, gt_lists):
        rows, ranks = _hit_positions(retrieved, gt_lists)
        hits = RankedHits(rows, ranks, np.array([len(g) for g in gt_lists], dtype=np.float64),
                          self._count_in_gallery(gt_lists), len(self.unique_gallery))
        self.first_gt_ranks.append(hits.first_hit_rank(not_found=self.depth + 1))
        for metric in METRICS.values():
            for k in self.reported_ks(metric):
                total = self._total(metric, hits, k)
                if total is not None:
                    sums = self.sums.setdefault(metric.name, {})
                    sums[k] = sums.get(k, 0.0) + float(total)

    def _total(self, metric, hits, k):
        """The metric's sum over the chunk; its per-query values are kept when intervals are drawn."""
        if self.bootstrap is None or metric.per_query is None:
            return metric.total(hits, k)
        values = metric.per_query(hits, k)
        self.per_query_values.setdefault((metric.name, k), []).append(values)
        return values.sum()

    def _count_in_gallery(self, gt_lists):
        """How many of each query's (unique) GT docs the gallery holds, all queries in one binary search."""
        docs = np.fromiter(itertools.chain.from_iterable(gt_lists), np.int64)
        owners = np.repeat(np.arange(len(gt_lists)), [len(query_docs) for query_docs in gt_lists])
        return np.bincount(owners, weights=_in_sorted(self.unique_gallery, docs), minlength=len(gt_lists))

    def reported_ks(self, metric):
        """The metric's Ks (its own, or this evaluation's) that the retrieved depth reaches."""
        return [k for k in metric.ks or self.ks if self.depth is None or k <= self.depth]

    def result(self) -> RetrievalScores:
        n = self.counters["num_queries"]
        values = {name: {k: (total / n if n else 0.0) for k, total in sums.items()} for name, sums in self.sums.items()}
        missing = set(self.ground_truth) - self.seen_gt_queries
        counters = {**self.counters, "gt_queries_missing_from_query_set": len(missing),
                    "retrieved_depth": int(self.depth or 0)}
        return RetrievalScores(values, counters, self._intervals(), self._median_first_gt_rank())

    def _median_first_gt_rank(self):
        ranks = np.concatenate(self.first_gt_ranks) if self.first_gt_ranks else np.empty(0)
        return float(np.median(ranks)) if len(ranks) else None

    def _intervals(self) -> MetricIntervals | None:
        if self.bootstrap is None:
            return None
        keys = list(self.per_query_values)
        bounds = {}
        if self.counters["num_queries"] and keys:
            values = np.column_stack([np.concatenate(self.per_query_values[key]) for key in keys])
            for (name, k), (low, high) in zip(keys, percentile_intervals(values, self.bootstrap)):
                bounds.setdefault(name, {})[k] = (float(low), float(high))
        return MetricIntervals(self.bootstrap, bounds)


def _in_sorted(sorted_values, values):
    """Which of ``values`` occur in the sorted array ``sorted_values`` (binary search, no sort of ``values``)."""
    if not len(sorted_values):
        return np.zeros(len(values), bool)
    positions = np.minimum(np.searchsorted(sorted_values, values), len(sorted_values) - 1)
    return sorted_values[positions] == values


def compute_metrics(query_ids, retrieved_ids, ground_truth, gallery_ids, ks=DEFAULT_KS) -> RetrievalScores:
    """Every registered metric (+ counters) of one (Q, k) retrieved-pid matrix; see module docstring."""
    metrics = RetrievalMetrics(ground_truth, gallery_ids, ks)
    metrics.update(query_ids, retrieved_ids)
    return metrics.result()


def format_table(scores: RetrievalScores) -> str:
    """Printable table: one row per K with a column per metric that has one, then the counters."""
    shown = [metric for metric in METRICS.values() if metric.display.column]
    lines = [f"{'K':>6}" + "".join(f" {metric.display.column:>{metric.display.width}}" for metric in shown)]
    for k in scores.ks(shown):
        cells = (scores.at(metric.name).get(k, float("nan")) for metric in shown)
        lines.append(f"{k:>6}" + "".join(f" {value:>{metric.display.width}.4f}" for metric, value in zip(shown, cells)))
    lines += [f"{name}: {scores.counters[name]}" for name in COUNTERS_SHOWN if name in scores.counters]
    if scores.median_first_gt_rank is not None:
        depth = scores.counters.get("retrieved_depth", 0)
        lines.append(f"median_first_gt_rank: {scores.median_first_gt_rank:g} ({depth + 1} = not in the top {depth})")
    return "\n".join(lines + _interval_lines(scores, shown))


def _interval_lines(scores: RetrievalScores, shown) -> list[str]:
    """The bootstrap intervals as a second table, a column per shown metric that has them."""
    intervals = scores.intervals
    with_intervals = [metric for metric in shown if intervals is not None and intervals.at(metric.name)]
    if not with_intervals:
        return []
    settings = intervals.settings
    lines = [f"bootstrap {settings.level:.0%} intervals ({settings.samples} resamples of the queries, "
             f"seed {settings.seed}):",
             f"{'K':>6}" + "".join(f" {metric.display.column:>{INTERVAL_WIDTH}}" for metric in with_intervals)]
    for k in scores.ks(with_intervals):
        cells = (format_interval(intervals.at(metric.name).get(k)) for metric in with_intervals)
        lines.append(f"{k:>6}" + "".join(f" {cell:>{INTERVAL_WIDTH}}" for cell in cells))
    return lines


def format_interval(bounds) -> str:
    """``[0.3812, 0.4410]``; ``-`` where there is no interval."""
    return "-" if bounds is None else f"[{bounds[0]:.4f}, {bounds[1]:.4f}]"
