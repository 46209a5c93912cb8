"""Evaluation speed and memory: legacy feature files -> exact top-1000 search -> Recall table.

    python benchmarks/bench_eval.py --queries 10000 --gallery 100000 --dim 512

Generates clustered L2-normalised features and a ground-truth file, writes the
features in the legacy text format, then runs ``run_evaluation`` in a fresh
process (so its peak RSS is the evaluation's alone, imports included) and
compares its load+search+metrics time with the bare fp32 score GEMM
(query x gallery^T, the floor for exact search) measured here afterwards.
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
from real20m.evaluate.cli import build_parser, run_evaluation
metrics = run_evaluation(build_parser().parse_args(sys.argv[1:]))
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10000)
    parser.add_argument("--gallery", type=int, default=100000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--topk", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2,
                        help="run evaluation and GEMM this many times each and keep the fastest (noisy machines)")
    parser.add_argument("--workdir", default=None, help="keep the generated files here (default: a temp dir)")
    args = parser.parse_args()

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
        write_legacy_features(paths["query.feat"], query_ids, queries)
        write_legacy_features(paths["gallery.feat"], gallery_ids, gallery)
        write_ground_truth(paths["gt.txt"], query_ids, query_labels, gallery_ids, gallery_labels, rng)
        text_mb = (os.path.getsize(paths["query.feat"]) + os.path.getsize(paths["gallery.feat"])) / 2**20

        command = [sys.executable, "-c", CHILD, "--query_features", paths["query.feat"],
                   "--gallery_features", paths["gallery.feat"], "--gt_file", paths["gt.txt"],
                   "--output_dir", paths["out"], "--topk", str(args.topk), "--quiet"]
        runs = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            child = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
            wall_s = time.perf_counter() - started
            if child.returncode != 0:
                sys.exit(f"evaluation failed:\n{child.stderr}")
            runs.append((json.loads(child.stdout.rsplit("TIMINGS ", 1)[1]), wall_s))
        print(child.stdout.rsplit("TIMINGS", 1)[0])
        timings, process_wall_s = min(runs, key=lambda run: run[0]["total_s"])
        peak_rss_mb = max(run[0]["peak_rss_mb"] for run in runs)

    gemm_runs = [bare_gemm_seconds(queries, gallery) for _ in range(args.repeats)]
    gemm = {name: min(run[name] for run in gemm_runs) for name in gemm_runs[0]}
    gemm_s = min(gemm.values())
    raw_matrix_mb = (queries.nbytes + gallery.nbytes) / 2**20
    result = {
        "end_to_end_s": round(timings["total_s"], 3),
        "gemm_s": round(gemm_s, 3),
        "ratio": round(timings["total_s"] / gemm_s, 3),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "raw_matrix_mb": round(raw_matrix_mb, 1),
        "rss_ratio": round(peak_rss_mb / raw_matrix_mb, 3),
        "load_s": round(timings["load_s"], 3),
        "search_and_metrics_s": round(timings["search_and_metrics_s"], 3),
        "process_wall_s": round(process_wall_s, 3),
        "all_end_to_end_s": [round(run[0]["total_s"], 3) for run in runs],
        "gemm_by_library_s": {name: round(t, 3) for name, t in gemm.items()},
        "text_mb": round(text_mb, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
