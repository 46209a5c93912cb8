"""Evaluation speed and memory: legacy feature files -> exact top-1000 search -> Recall table.

    python benchmarks/bench_eval.py --queries 10000 --gallery 100000 --dim 512

Generates clustered L2-normalised features and a ground-truth file, writes the
features in the legacy text format, then runs ``run_evaluation`` in a fresh
process (so its peak RSS is the evaluation's alone, imports included) and
compares its load+search+metrics time with the bare fp32 score GEMM
(query x gallery^T, 1024 query rows per call into one reused output buffer) measured here right
after each evaluation run. ``blocked_gemm`` is the same GEMM in cache-sized blocks (no top-k), a
second reference; ``read_bytes_s`` is reading the text files' bytes, the floor of loading them.
``load_average`` (start, end) says how busy the machine was. Repeat with --workdir to reuse the
text files.
Prints one JSON object as the last line.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from real20m.evaluate.feature_io import write_legacy_features  # noqa: E402

# The child reports its own peak RSS from /proc (VmHWM starts afresh at exec; ru_maxrss of a
# forked child would include the parent's pages it saw before exec).
CHILD = """
import json, sys
from real20m.evaluate.cli import parse_request, run_evaluation
metrics = run_evaluation(parse_request(sys.argv[1:]))
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("TIMINGS " + json.dumps(dict(metrics["timings"], peak_rss_mb=peak_kib / 1024)))
"""


def clustered_features(n, centers, noise, rng):
    labels = rng.integers(0, len(centers), n)
    feats = centers[labels] + noise * rng.standard_normal((n, centers.shape[1]), dtype=np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return feats, labels


def write_ground_truth(path, query_ids, query_labels, gallery_ids, gallery_labels, rng, max_docs=5):
    members = np.argsort(gallery_labels, kind="stable")
    starts = np.searchsorted(gallery_labels[members], np.arange(gallery_labels.max() + 2))
    with open(path, "w") as f:
        for qid, label in zip(query_ids.tolist(), query_labels.tolist()):
            cluster = members[starts[label]:starts[label + 1]]
            if len(cluster) == 0:
                continue
            docs = gallery_ids[rng.choice(cluster, size=min(len(cluster), rng.integers(1, max_docs + 1)),
                                          replace=False)]
            refs = ",".join(f"goods/images/{d % 50000}/{d}.jpg" for d in docs.tolist())
            f.write(f"video/images/{qid % 50000}/{qid}_0.jpg\t{refs}\n")


def bare_gemm_seconds(queries, gallery, rows_per_call=1024):
    """Fastest of numpy and torch fp32 GEMM over all query x gallery scores (output buffer reused)."""
    out = np.empty((rows_per_call, len(gallery)), np.float32)
    timings = {}
    started = time.perf_counter()
    for start in range(0, len(queries), rows_per_call):
        block = queries[start:start + rows_per_call]
        np.matmul(block, gallery.T, out=out[:len(block)])
    timings["numpy"] = time.perf_counter() - started
    try:
        import torch
    except ImportError:
        return timings
    q, g, out_t = torch.from_numpy(queries), torch.from_numpy(gallery), torch.from_numpy(out)
    started = time.perf_counter()
    for start in range(0, len(queries), rows_per_call):
        block = q[start:start + rows_per_call]
        torch.matmul(block, g.T, out=out_t[:len(block)])
    timings["torch"] = time.perf_counter() - started
    return timings


def blocked_gemm_seconds(queries, gallery, rows_per_call=256, gallery_rows=2048):
    """The same scores in cache-sized blocks (output buffer of 256 x 2048 reused), no top-k:
    the bare GEMM above writes a 1024 x N block to memory per call, which is not free either."""
    out = np.empty((rows_per_call, gallery_rows), np.float32)
    started = time.perf_counter()
    for start in range(0, len(queries), rows_per_call):
        block = queries[start:start + rows_per_call]
        for lo in range(0, len(gallery), gallery_rows):
            rows = gallery[lo:lo + gallery_rows]
            np.matmul(block, rows.T, out=out[:len(block), :len(rows)])
    return time.perf_counter() - started


def read_bytes_seconds(paths):
    started = time.perf_counter()
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass
    return time.perf_counter() - started


def _best_median(values):
    values = sorted(values)
    return round(values[0], 3), round(values[len(values) // 2], 3)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10000)
    parser.add_argument("--gallery", type=int, default=100000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--topk", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3,
                        help="run evaluation and GEMM this many times each, interleaved (noisy machines)")
    parser.add_argument("--workdir", default=None, help="keep the generated files here (default: a temp dir)")
    args = parser.parse_args()

    load_at_start = os.getloadavg()[0]
    rng = np.random.default_rng(args.seed)
    centers = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    gallery, gallery_labels = clustered_features(args.gallery, centers, 0.05, rng)
    queries, query_labels = clustered_features(args.queries, centers, 0.05, rng)
    gallery_ids = rng.permutation(10 * args.gallery)[:args.gallery].astype(np.int64) + 10**6
    query_ids = np.arange(args.queries, dtype=np.int64) + 10**7

    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        if args.workdir:
            tmp = args.workdir
            os.makedirs(tmp, exist_ok=True)
        paths = {name: os.path.join(tmp, name) for name in ("query.feat", "gallery.feat", "gt.txt", "out")}
        stamp_path = os.path.join(tmp, "params.json")
        stamp = json.dumps({name: getattr(args, name) for name in ("queries", "gallery", "dim", "clusters", "seed")})
        reuse = args.workdir and os.path.exists(stamp_path) and open(stamp_path).read() == stamp
        write_text_s = None
        if not reuse:   # the same --workdir and parameters reuse the text files written last time
            started = time.perf_counter()
            write_legacy_features(paths["query.feat"], query_ids, queries)
            write_legacy_features(paths["gallery.feat"], gallery_ids, gallery)
            write_text_s = time.perf_counter() - started
            write_ground_truth(paths["gt.txt"], query_ids, query_labels, gallery_ids, gallery_labels, rng)
            if args.workdir:
                with open(stamp_path, "w") as f:
                    f.write(stamp)
        text_mb = (os.path.getsize(paths["query.feat"]) + os.path.getsize(paths["gallery.feat"])) / 2**20
        read_bytes_s = min(read_bytes_seconds([paths["query.feat"], paths["gallery.feat"]]) for _ in range(3))

        command = [sys.executable, "-c", CHILD, "--query_features", paths["query.feat"],
                   "--gallery_features", paths["gallery.feat"], "--gt_file", paths["gt.txt"],
                   "--output_dir", paths["out"], "--topk", str(args.topk), "--quiet"]
        runs = []
        for _ in range(args.repeats):   # interleaved, so load changes hit both sides of a ratio alike
            started = time.perf_counter()
            child = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
            wall_s = time.perf_counter() - started
            if child.returncode != 0:
                sys.exit(f"evaluation failed:\n{child.stderr}")
            gemm = bare_gemm_seconds(queries, gallery)
            gemm["blocked"] = blocked_gemm_seconds(queries, gallery)
            runs.append((json.loads(child.stdout.rsplit("TIMINGS ", 1)[1]), wall_s, gemm))
        print(child.stdout.rsplit("TIMINGS", 1)[0])

    raw_matrix_mb = (queries.nbytes + gallery.nbytes) / 2**20
    timings, process_wall_s, _ = min(runs, key=lambda run: run[0]["total_s"])
    peak_rss_mb = max(run[0]["peak_rss_mb"] for run in runs)
    bare = [min(run[2]["numpy"], run[2].get("torch", np.inf)) for run in runs]
    blocked = [run[2]["blocked"] for run in runs]
    totals = [run[0]["total_s"] for run in runs]
    gemm_s = min(bare)
    result = {
        "end_to_end_s": round(min(totals), 3),
        "gemm_s": round(gemm_s, 3),
        "ratio": round(min(totals) / gemm_s, 3),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "raw_matrix_mb": round(raw_matrix_mb, 1),
        "rss_ratio": round(peak_rss_mb / raw_matrix_mb, 3),
        "load_s": round(timings["load_s"], 3),
        "search_and_metrics_s": round(timings["search_and_metrics_s"], 3),
        "process_wall_s": round(process_wall_s, 3),
        # per repeat: [best, median] over the repeats; ratios pair each run with the GEMM right after it
        "end_to_end_best_median_s": _best_median(totals),
        "gemm_best_median_s": _best_median(bare),
        "ratio_best_median": _best_median([t / g for t, g in zip(totals, bare)]),
        "load_best_median_s": _best_median([run[0]["load_s"] for run in runs]),
        "search_and_metrics_best_median_s": _best_median([run[0]["search_and_metrics_s"] for run in runs]),
        # search + metrics over the GEMM measured right after the same run
        "search_ratio_best_median": _best_median([run[0]["search_and_metrics_s"] / g for run, g in zip(runs, bare)]),
        "read_bytes_s": round(read_bytes_s, 3),
        "peak_rss_mb_all": [round(run[0]["peak_rss_mb"], 1) for run in runs],
        "blocked_gemm_best_median_s": _best_median(blocked),
        "ratio_vs_blocked_gemm_best_median": _best_median([t / g for t, g in zip(totals, blocked)]),
        "all_end_to_end_s": [round(t, 3) for t in totals],
        "gemm_by_library_s": {name: round(min(run[2][name] for run in runs), 3) for name in runs[0][2]},
        "text_mb": round(text_mb, 1),
        # writing the legacy text files (null when --workdir reused them); load_s above is reading them
        "write_text_s": None if write_text_s is None else round(write_text_s, 3),
        "load_average": [round(load_at_start, 2), round(os.getloadavg()[0], 2)],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
