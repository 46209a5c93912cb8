"""Evaluation at Real20M scale: a 20M-item float16 gallery on disk, an IVF index, chunked search.

    python benchmarks/bench_scale.py --gallery 20000000 --queries 10000 --dim 512

1. Writes clustered, L2-normalised float16 gallery features as a shard folder (one ``.npy`` shard
   per ``--shard_rows`` rows, the layout feature extraction writes) in a fresh folder under
   ``--workdir``, after checking the disk has room for them; the folder is removed at the end,
   also on error or Ctrl-C (``--keep`` keeps it).
2. In a fresh process (so the peak RSS is the evaluation's alone), builds the ``--index`` on the
   memory-mapped shards: trained on ``--train_size`` sampled rows, filled chunk by chunk.
3. Searches the top-100 of every query at each ``--nprobe`` and measures
   ``recall_vs_exact@100``: exact top-100 over the first ``--subset`` gallery rows against the
   same index searched with an ``IDSelectorRange`` restricting it to those rows (same trained
   lists, same nprobe), averaged over the queries.

Prints one JSON object as the last line; ``search_s`` and ``recall_vs_exact@100`` are those of
the smallest nprobe reaching ``--target_recall`` (or the largest tried), ``tradeoff`` lists all.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from bench_eval import clustered_features  # noqa: E402
from real20m.evaluate.feature_io import write_feature_folder  # noqa: E402

NOISE = 0.05            # per dimension: within-cluster cosine ~0.45 at 512 dims
ROWS_PER_DRAW = 1 << 17  # rows generated at a time (keeps generation to ~0.5 GB per process)
DISK_MARGIN_BYTES = 512 << 20


def needed_bytes(n_gallery, dim, n_queries):
    """Gallery float16 + ids + query float32 shards + a margin for the file system."""
    return n_gallery * (dim * 2 + 8) + n_queries * (dim * 4 + 8) + DISK_MARGIN_BYTES


def make_centers(n_clusters, dim, seed):
    centers = np.random.default_rng(seed).standard_normal((n_clusters, dim), dtype=np.float32)
    return centers / np.linalg.norm(centers, axis=1, keepdims=True)


def gallery_part(shard, start, stop, centers, seed):
    """Gallery rows [start, stop): (ids = row numbers, float16 features)."""
    rng = np.random.default_rng([seed, shard])
    feats = np.empty((stop - start, centers.shape[1]), np.float16)
    for lo in range(0, stop - start, ROWS_PER_DRAW):
        hi = min(lo + ROWS_PER_DRAW, stop - start)
        feats[lo:hi] = clustered_features(hi - lo, centers, NOISE, rng)[0]
    return np.arange(start, stop, dtype=np.int64), feats


def write_dataset(workdir, args):
    """The gallery feature folder (its parts drawn by 2 processes, one partition each) and a query folder."""
    centers = make_centers(args.clusters, args.dim, args.seed)
    gallery_dir, query_dir = os.path.join(workdir, "gallery"), os.path.join(workdir, "queries")
    bounds = [(start, min(start + args.shard_rows, args.gallery)) for start in range(0, args.gallery, args.shard_rows)]
    with ProcessPoolExecutor(max_workers=2) as pool:
        jobs = [pool.submit(gallery_part, shard, start, stop, centers, args.seed)
                for shard, (start, stop) in enumerate(bounds)]

        def parts():
            for job in jobs:
                ids, feats = job.result()
                print(f"generated {ids[-1] + 1}/{args.gallery} gallery rows", file=sys.stderr, flush=True)
                yield ids, feats

        write_feature_folder(gallery_dir, parts(), {"benchmark": "bench_scale gallery", "seed": args.seed}, "float16")
    queries, _ = clustered_features(args.queries, centers, NOISE, np.random.default_rng([args.seed, 1 << 30]))
    write_feature_folder(query_dir, [(np.arange(args.queries, dtype=np.int64), queries)],
                         {"benchmark": "bench_scale queries", "seed": args.seed})
    return gallery_dir, query_dir


def _peak_rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def _search_all(index, queries, k, query_chunk, params=None):
    results = [index.search(queries[start:start + query_chunk], k, params=params)[1]
               for start in range(0, len(queries), query_chunk)]
    return np.concatenate(results)


def measure(gallery_dir, query_dir, args):
    """Build, search at every nprobe, compare with exact search on the subset (run in a child)."""
    import faiss

    from real20m.evaluate.faiss_backend import SearchDevice
    from real20m.evaluate.feature_io import load_features, read_rows
    from real20m.evaluate.search import search
    from real20m.evaluate.search_config import SearchConfig
    from real20m.evaluate.searchers.sharded import ShardedIndex

    gallery = load_features(gallery_dir).feats
    queries = read_rows(load_features(query_dir).feats, 0, args.queries)
    subset = min(args.subset, len(gallery))
    started = time.perf_counter()
    config = SearchConfig(index=args.index, train_size=args.train_size, chunk_size=args.chunk_rows)
    index = ShardedIndex.build(gallery, config, SearchDevice(0))
    build_s = time.perf_counter() - started

    started = time.perf_counter()
    _, exact = search(queries, gallery[0:subset], 100, SearchConfig(chunk_size=args.chunk_rows, show_progress=False))
    exact_subset_s = time.perf_counter() - started

    tradeoff = []
    for nprobe in args.nprobe:
        index.set_search_parameters(nprobe=nprobe)
        started = time.perf_counter()
        _search_all(index.index, queries, 100, args.query_chunk)
        search_s = time.perf_counter() - started
        restricted = faiss.SearchParametersIVF(sel=faiss.IDSelectorRange(0, subset), nprobe=nprobe)
        approximate = _search_all(index.index, queries, 100, args.query_chunk, restricted)
        recall = np.mean([np.intersect1d(a, e).size / e.size for a, e in zip(approximate, exact)])
        tradeoff.append({"nprobe": nprobe, "search_s": round(search_s, 1),
                         "recall_vs_exact@100": round(float(recall), 4)})
        print(json.dumps(tradeoff[-1]), file=sys.stderr, flush=True)
    return {"build_s": round(build_s, 1), "exact_subset_s": round(exact_subset_s, 1), "tradeoff": tradeoff,
            "peak_rss_mb": round(_peak_rss_mb(), 1)}


def run_child(workdir, gallery_dir, query_dir, argv):
    """``measure`` in a fresh process; its result comes back in a file (Faiss prints on stdout)."""
    result_path = os.path.join(workdir, "result.json")
    command = [sys.executable, os.path.abspath(__file__), "--child", gallery_dir, query_dir, result_path] + argv
    subprocess.run(command, check=True, stdout=sys.__stderr__.fileno())
    with open(result_path) as f:
        return json.load(f)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", type=int, default=20_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=2_000,
                        help="feature clusters (the default leaves ~500 members of each in a 1M subset, so a "
                             "query's exact top-100 are neighbours, not near-ties of unrelated items)")
    parser.add_argument("--index", default="IVF4096,SQ8")
    parser.add_argument("--nprobe", type=lambda text: [int(v) for v in text.split(",")], default=[1, 2, 4, 8])
    parser.add_argument("--target_recall", type=float, default=0.95)
    parser.add_argument("--train_size", type=int, default=262_144)
    parser.add_argument("--subset", type=int, default=1_000_000, help="gallery rows searched exactly")
    parser.add_argument("--shard_rows", type=int, default=1_000_000, help="gallery rows per feature file")
    parser.add_argument("--chunk_rows", type=int, default=262_144, help="gallery rows in memory at a time")
    parser.add_argument("--query_chunk", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=tempfile.gettempdir(), help="where the features are written")
    parser.add_argument("--keep", action="store_true", help="keep the feature folder")
    parser.add_argument("--child", nargs=3, metavar=("GALLERY_DIR", "QUERY_DIR", "RESULT_JSON"),
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        gallery_dir, query_dir, result_path = args.child
        with open(result_path, "w") as f:
            json.dump(measure(gallery_dir, query_dir, args), f)
        return
    need, free = needed_bytes(args.gallery, args.dim, args.queries), shutil.disk_usage(args.workdir).free
    if free < need:
        print(json.dumps({"error": f"{args.workdir} has {free / 1e9:.1f} GB free, this run needs "
                                   f"{need / 1e9:.1f} GB; use --workdir or a smaller --gallery"}))
        sys.exit(2)
    workdir = tempfile.mkdtemp(prefix="real20m_bench_scale_", dir=args.workdir)
    # SIGTERM becomes an exception, so the finally below removes ~20 GB on `kill` as on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        started = time.perf_counter()
        gallery_dir, query_dir = write_dataset(workdir, args)
        generate_s = time.perf_counter() - started
        result = run_child(workdir, gallery_dir, query_dir, argv)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    chosen = next((row for row in result["tradeoff"] if row["recall_vs_exact@100"] >= args.target_recall),
                  result["tradeoff"][-1])
    print(json.dumps({
        "gallery": args.gallery, "queries": args.queries, "dim": args.dim, "index": args.index,
        "nprobe": chosen["nprobe"], "build_s": result["build_s"], "search_s": chosen["search_s"],
        "peak_rss_mb": result["peak_rss_mb"], "recall_vs_exact@100": chosen["recall_vs_exact@100"],
        "subset": min(args.subset, args.gallery), "exact_subset_s": result["exact_subset_s"],
        "generate_s": round(generate_s, 1), "disk_gb": round(needed_bytes(args.gallery, args.dim, args.queries) / 1e9, 1),
        "tradeoff": result["tradeoff"],
    }))


if __name__ == "__main__":
    main()
