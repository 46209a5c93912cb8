"""Many runs of one variant -> one number per task and metric: mean ± std over the runs (every
training seed on every dataset) and a 95% interval.

The interval: when every run's ``metrics.json`` carries a bootstrap interval over its queries
(``intervals``), the mean of their lower ends and the mean of their upper ends. The runs share
their test queries (the seeds differ in training only), so averaging runs does not shrink the
uncertainty of sampling those queries, which is what those intervals measure. Otherwise a
bootstrap of the mean over the runs' values (seeded, so the same runs give the same interval).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CURVE_KS = (1, 5, 10, 20, 50, 100)
TABLE_METRICS = ("recall@1", "recall@5", "recall@10", "recall@50", "hit@10")
SUMMARY_METRICS = tuple(dict.fromkeys((*TABLE_METRICS, *(f"recall@{k}" for k in CURVE_KS))))
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


@dataclass(frozen=True)
class MetricSummary:
    mean: float
    std: float           # population std (ddof 0) over the runs, as the learning-quality table
    low: float
    high: float
    values: tuple[float, ...]
    interval_source: str   # "queries": the runs' own bootstrap intervals; "runs": bootstrap over the runs

    def as_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "low": self.low, "high": self.high, "values": list(self.values),
                "interval_source": self.interval_source}


def bootstrap_mean_interval(values, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                            confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The percentile interval of the mean of ``values`` resampled with replacement."""
    values = np.asarray(values, dtype=np.float64)
    draws = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    means = values[draws].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def run_interval(metrics: dict, name: str) -> tuple[float, float] | None:
    """The bootstrap interval ``metrics.json`` gives for metric ``name``, or None. Read as a
    [low, high] pair or a mapping with low/high (or lower/upper)."""
    interval = (metrics.get("intervals") or {}).get(name)
    if isinstance(interval, dict):
        ends = (interval.get("low", interval.get("lower")), interval.get("high", interval.get("upper")))
    elif isinstance(interval, (list, tuple)) and len(interval) == 2:
        ends = tuple(interval)
    else:
        return None
    return None if None in ends else (float(ends[0]), float(ends[1]))


def summarize(runs: list[dict], name: str) -> MetricSummary | None:
    """Metric ``name`` over ``runs`` (each a metrics.json dict); None when a run lacks it."""
    if not runs or any(name not in metrics for metrics in runs):
        return None
    values = np.array([float(metrics[name]) for metrics in runs])
    intervals = [run_interval(metrics, name) for metrics in runs]
    if all(interval is not None for interval in intervals):
        low, high = np.mean(intervals, axis=0)
        source = "queries"
    else:
        low, high = bootstrap_mean_interval(values)
        source = "runs"
    return MetricSummary(float(values.mean()), float(values.std()), float(low), float(high),
                         tuple(float(value) for value in values), source)


def summarize_variant(runs: list[dict[str, dict]], tasks: tuple[str, ...]) -> dict[str, dict[str, MetricSummary]]:
    """{task: {metric: summary}} of one variant's runs (each {task: metrics.json dict})."""
    table = {}
    for task in tasks:
        task_runs = [run[task] for run in runs]
        summaries = {name: summarize(task_runs, name) for name in SUMMARY_METRICS}
        table[task] = {name: summary for name, summary in summaries.items() if summary is not None}
    return table
