"""Regression guard for evaluation speed: the legacy reader and the exact search against their floors.

    python benchmarks/bench_eval_guard.py

In one run, on clustered unit-norm features:
* ``reader_ratio``: reading ``--text_rows`` of them from a legacy text file with
  ``read_legacy_features`` over reading the file's bytes;
* ``search_ratio``: exact top-k search plus Recall@K metrics, as evaluation runs them, over the
  bare fp32 GEMM of the same queries and gallery (numpy, 1024 query rows per call).
Each side is timed ``--repeats`` times, interleaved so a busy moment hits both, and the best times
are compared with fixed limits. A ratio past its limit means a change made that path slower than
it has been; the exit status is then 1. Faiss's threads suffer more from a busy machine than the
GEMM does: when ``load_average`` is high, rerun before trusting a failure. Takes about 10 s on 2 cores.
Prints one JSON object as the last line.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from real20m.evaluate.feature_io import read_legacy_features, write_legacy_features  # noqa: E402
from real20m.evaluate.bootstrap import BootstrapSettings  # noqa: E402
from real20m.evaluate.metrics import DEFAULT_KS, RetrievalMetrics  # noqa: E402
from real20m.evaluate.search import gallery_ids_at, iter_search  # noqa: E402
from real20m.evaluate.search_config import SearchConfig  # noqa: E402
from real20m.evaluate.searchers import open_searcher  # noqa: E402

# Measured 2026-12-07 on the 2-core development machine: reader 18-27 x the byte read (which runs
# at ~8 GB/s from the page cache), search 1.5-1.9 x the GEMM. The limits leave room for noise and
# still catch the previous reader (~80 x), a fall back to parsing value by value (~100 x) or Faiss's
# GEMM on a generic BLAS kernel (4-5 x).
READER_LIMIT = 40.0
SEARCH_LIMIT = 2.0


def clustered(n, centers, rng):
    feats = centers[rng.integers(0, len(centers), n)] + 0.05 * rng.standard_normal((n, centers.shape[1]),
                                                                                  dtype=np.float32)
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def read_bytes_seconds(path):
    started = time.perf_counter()
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
    return time.perf_counter() - started


def reader_seconds(path):
    started = time.perf_counter()
    read_legacy_features(path)
    return time.perf_counter() - started


def gemm_seconds(queries, gallery, rows_per_call=1024):
    out = np.empty((rows_per_call, len(gallery)), np.float32)
    started = time.perf_counter()
    for start in range(0, len(queries), rows_per_call):
        block = queries[start:start + rows_per_call]
        np.matmul(block, gallery.T, out=out[:len(block)])
    return time.perf_counter() - started


def search_seconds(queries, gallery, gallery_ids, ground_truth, k):
    """Exact search and metrics, chunk by chunk, the calls evaluation makes (with its default
    bootstrap intervals)."""
    started = time.perf_counter()
    metrics = RetrievalMetrics(ground_truth, gallery_ids, DEFAULT_KS, BootstrapSettings())
    searcher = open_searcher(gallery, SearchConfig(use_gpu="never", show_progress=False), depth=k)
    for start, _, rows in iter_search(queries, searcher, k, show_progress=False):
        metrics.update(np.arange(start, start + len(rows)), gallery_ids_at(gallery_ids, rows))
    metrics.result()
    return time.perf_counter() - started


def best_ratio(numerator, denominator):
    return round(min(numerator) / min(denominator), 3)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text_rows", type=int, default=16384)
    parser.add_argument("--queries", type=int, default=1024)
    parser.add_argument("--gallery", type=int, default=100000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--topk", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reader_limit", type=float, default=READER_LIMIT)
    parser.add_argument("--search_limit", type=float, default=SEARCH_LIMIT)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((max(args.gallery // 50, 1), args.dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    gallery, queries = clustered(args.gallery, centers, rng), clustered(args.queries, centers, rng)
    gallery_ids = np.arange(args.gallery, dtype=np.int64) + 10**6
    ground_truth = {q: gallery_ids[rng.integers(0, args.gallery, 3)].tolist() for q in range(args.queries)}
    times = {name: [] for name in ("read_bytes", "reader", "gemm", "search")}
    with tempfile.TemporaryDirectory(prefix="bench_eval_guard_") as tmp:
        path = os.path.join(tmp, "features.feat")
        text_rows = clustered(args.text_rows, centers, rng)
        write_legacy_features(path, np.arange(args.text_rows) + 10**6, text_rows)
        del text_rows
        for _ in range(args.repeats):
            times["read_bytes"].append(read_bytes_seconds(path))
            times["reader"].append(reader_seconds(path))
            times["gemm"].append(gemm_seconds(queries, gallery))
            times["search"].append(search_seconds(queries, gallery, gallery_ids, ground_truth, args.topk))
        text_mb = os.path.getsize(path) / 2**20
    result = {
        "reader_ratio": best_ratio(times["reader"], times["read_bytes"]),
        "reader_limit": args.reader_limit,
        "search_ratio": best_ratio(times["search"], times["gemm"]),
        "search_limit": args.search_limit,
        "best_s": {name: round(min(values), 4) for name, values in times.items()},
        "text_mb": round(text_mb, 1),
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }
    result["ok"] = result["reader_ratio"] <= args.reader_limit and result["search_ratio"] <= args.search_limit
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
