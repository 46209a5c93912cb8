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
"""
import itertools
import math

import numpy as np

DEFAULT_KS = (1, 5, 10, 20, 50, 100, 200, 500, 1000)
GT_BROADCAST_LIMIT = 64   # queries with more GT docs are matched with np.isin


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


class RetrievalMetrics:
    """Accumulates Recall/hit/mAP@K over chunks of queries (see the module docstring)."""

    def __init__(self, ground_truth, gallery_ids, ks=DEFAULT_KS):
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
        gt_sizes = np.array([len(g) for g in gt_lists], dtype=np.float64)
        rows, ranks = _hit_positions(retrieved, gt_lists)
        # 1-based position of each hit among its row's hits = hits so far at that rank.
        row_starts = np.searchsorted(rows, rows, side="left")
        hits_so_far = np.arange(1, len(rows) + 1) - row_starts
        precision_at_hit = hits_so_far / (ranks + 1)
        present = self._count_in_gallery(gt_lists)
        n_gallery = len(self.unique_gallery)
        for k in self.reported_ks:
            within = ranks < k
            hits = np.bincount(rows[within], minlength=len(gt_lists))
            precision_sum = np.bincount(rows[within], weights=precision_at_hit[within], minlength=len(gt_lists))
            self._add(f"recall@{k}", (hits / np.maximum(gt_sizes, 1)).sum())
            self._add(f"hit@{k}", np.count_nonzero(hits))
            self._add(f"map@{k}", (precision_sum / np.maximum(np.minimum(gt_sizes, k), 1)).sum())
            if n_gallery:
                self._add(f"chance_recall@{k}", (present / np.maximum(gt_sizes, 1)).sum() * min(k, n_gallery) / n_gallery)
                self._add(f"chance_hit@{k}", _sum_chance_hit(n_gallery, present, k))

    def _count_in_gallery(self, gt_lists):
        """How many of each query's (unique) GT docs the gallery holds, all queries in one binary search."""
        docs = np.fromiter(itertools.chain.from_iterable(gt_lists), np.int64)
        owners = np.repeat(np.arange(len(gt_lists)), [len(query_docs) for query_docs in gt_lists])
        return np.bincount(owners, weights=_in_sorted(self.unique_gallery, docs), minlength=len(gt_lists))

    def _add(self, key, value):
        self.sums[key] = self.sums.get(key, 0.0) + float(value)

    @property
    def reported_ks(self):
        return [k for k in self.ks if self.depth is None or k <= self.depth]

    def result(self):
        n = self.counters["num_queries"]
        out = {key: (total / n if n else 0.0) for key, total in self.sums.items()}
        missing = set(self.ground_truth) - self.seen_gt_queries
        out.update(self.counters)
        out["gt_queries_missing_from_query_set"] = len(missing)
        out["retrieved_depth"] = int(self.depth or 0)
        return out


def _in_sorted(sorted_values, values):
    """Which of ``values`` occur in the sorted array ``sorted_values`` (binary search, no sort of ``values``)."""
    if not len(sorted_values):
        return np.zeros(len(values), bool)
    positions = np.minimum(np.searchsorted(sorted_values, values), len(sorted_values) - 1)
    return sorted_values[positions] == values


def _sum_chance_hit(n, present, k):
    """Sum of ``_chance_hit(n, g, k)`` over the queries' GT counts ``present``: one call per distinct count."""
    counts, queries = np.unique(present.astype(np.int64), return_counts=True)
    return sum(int(m) * _chance_hit(n, int(g), k) for g, m in zip(counts, queries))


def _chance_hit(n, g, k):
    """P(at least one of g relevant items in the first k of a random ranking of n) = 1 - C(n-g, k) / C(n, k)."""
    k = min(k, n)
    if g == 0:
        return 0.0
    if n - g < k:
        return 1.0
    log_none = (math.lgamma(n - g + 1) - math.lgamma(n - g - k + 1)) - (math.lgamma(n + 1) - math.lgamma(n - k + 1))
    return 1.0 - math.exp(log_none)


def compute_metrics(query_ids, retrieved_ids, ground_truth, gallery_ids, ks=DEFAULT_KS):
    """Recall@K, hit@K, map@K (+ counters) of one (Q, k) retrieved-pid matrix; see module docstring."""
    metrics = RetrievalMetrics(ground_truth, gallery_ids, ks)
    metrics.update(query_ids, retrieved_ids)
    return metrics.result()


def format_table(metrics):
    """Printable table: one row per K with recall / hit / mAP, then the counters."""
    ks = sorted(int(key.split("@")[1]) for key in metrics if key.startswith("recall@"))
    lines = [f"{'K':>6} {'Recall@K':>10} {'hit@K':>10} {'mAP@K':>10} {'chance R@K':>11}"]
    for k in ks:
        chance = metrics.get(f"chance_recall@{k}", float("nan"))
        lines.append(f"{k:>6} {metrics[f'recall@{k}']:>10.4f} {metrics[f'hit@{k}']:>10.4f} "
                     f"{metrics[f'map@{k}']:>10.4f} {chance:>11.4f}")
    counters = ("num_queries", "num_gallery", "queries_without_gt", "gt_queries_missing_from_query_set",
                "gt_docs_missing_from_gallery", "duplicate_gallery_ids")
    lines += [f"{name}: {metrics[name]}" for name in counters if name in metrics]
    return "\n".join(lines)
