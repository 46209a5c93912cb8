"""Time and memory of loading a query-grouped train file of N lines.

Writes a synthetic ``query \\t goods_ids \\t video_ids`` file (text only) to a temp dir, loads it
with ``load_query_groups`` and deletes it. Prints one JSON line: {"lines", "load_s", "peak_rss_mb"}.
Targets for 20M lines on a 2-core box: load <= 60 s, peak RSS <= 2048 MB.

    python benchmarks/bench_annotations.py --lines 20000000
"""
import argparse
import json
import os
import resource
import tempfile
import time

import numpy as np

from real20m.datasets.annotations import load_query_groups

WORDS = ["连衣裙", "夏季", "red", "dress", "运动鞋", "男款", "phone", "case", "口红", "礼盒", "新款", "women"]


def write_train_file(path: str, lines: int, seed: int = 0, block: int = 50_000) -> None:
    """Realistic shapes: 2-4 word queries, 0-3 goods and 0-3 video ids of 6-9 digits, never both None."""
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for first in range(0, lines, block):
            n = min(block, lines - first)
            words = rng.integers(0, len(WORDS), size=(n, 3))
            n_goods = rng.integers(0, 4, size=n)
            n_videos = np.where(n_goods == 0, rng.integers(1, 4, size=n), rng.integers(0, 4, size=n))
            ids = rng.integers(100_000, 999_999_999, size=(n, 6)).astype(str)
            rows = []
            for i in range(n):
                query = f"{WORDS[words[i, 0]]} {WORDS[words[i, 1]]} {WORDS[words[i, 2]]} {first + i}"
                goods = ",".join(ids[i, : n_goods[i]]) or "None"
                videos = ",".join(ids[i, 3 : 3 + n_videos[i]]) or "None"
                rows.append(f"{query}\t{goods}\t{videos}\n")
            handle.write("".join(rows))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=2_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "train.txt")
        write_train_file(path, args.lines)
        rss_before = peak_rss_mb()
        start = time.perf_counter()
        groups = load_query_groups(path)
        load_s = time.perf_counter() - start
        assert len(groups) == args.lines, (len(groups), args.lines)
        result = {
            "lines": args.lines,
            "file_mb": round(os.path.getsize(path) / 2**20, 1),
            "load_s": round(load_s, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "rss_before_load_mb": round(rss_before, 1),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
