"""Percentile bootstrap intervals of metrics that are means over queries.

A resample draws Q queries with replacement from the Q evaluated queries; the interval at level L
is the (1 - L) / 2 and (1 + L) / 2 percentiles of the resampled means. Resamples are drawn in
batches of at most RESAMPLE_ELEMENTS query draws, so memory stays at a few tens of MB beside the
(Q, M) per-query values however many queries and resamples there are. The draws depend only on
the seed and Q: the same evaluation gives the same intervals.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESAMPLE_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class BootstrapSettings:
    """How intervals are drawn: ``samples`` resamples (0: no intervals), their ``seed``, the ``level``."""

    samples: int = 1000
    seed: int = 0
    level: float = 0.95

    @property
    def enabled(self) -> bool:
        return self.samples > 0

    def record(self) -> dict:
        """metrics.json's ``bootstrap``: how its ``intervals`` were drawn."""
        return {"samples": self.samples, "seed": self.seed, "level": self.level}


@dataclass(frozen=True)
class MetricIntervals:
    """Bootstrap intervals by metric name and K (``{"recall": {10: (0.38, 0.44)}}``), and how they were drawn."""

    settings: BootstrapSettings
    bounds: dict[str, dict[int, tuple[float, float]]]

    def at(self, name: str) -> dict[int, tuple[float, float]]:
        return self.bounds.get(name, {})


def resampled_means(values: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """(samples, M) column means of ``values`` (Q, M) over ``samples`` resamples of its rows with replacement."""
    num_rows = len(values)
    rng = np.random.default_rng(seed)
    batch = max(1, RESAMPLE_ELEMENTS // num_rows)
    means = []
    for first in range(0, samples, batch):
        size = min(batch, samples - first)
        draws = rng.integers(0, num_rows, size=(size, num_rows))
        # How often each query was drawn in each resample: one bincount over the whole batch.
        offsets = (np.arange(size) * num_rows)[:, None]
        counts = np.bincount((draws + offsets).ravel(), minlength=size * num_rows).reshape(size, num_rows)
        means.append(counts.astype(np.float64) @ values / num_rows)
    return np.concatenate(means)


def percentile_intervals(values: np.ndarray, settings: BootstrapSettings) -> np.ndarray:
    """(M, 2) lower and upper bounds of the mean of each column of ``values`` (Q, M), Q > 0."""
    means = resampled_means(np.asarray(values, dtype=np.float64), settings.samples, settings.seed)
    tail = 100 * (1 - settings.level) / 2
    return np.percentile(means, [tail, 100 - tail], axis=0).T
