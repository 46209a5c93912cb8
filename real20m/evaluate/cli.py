"""Feature files -> search -> Recall@K table, metrics.json, recall.png and report.html.

    python evaluation.py --query_features Q --gallery_features G --gt_file GT --output_dir D
    python -m real20m.evaluate ...   (same flags)

Feature paths are shard folders (native) or legacy text files. Nothing here
imports torch: evaluation of a large gallery must stay within a small memory
budget on a CPU box.
"""

import argparse
import json
import os
import time

import numpy as np

from real20m.datasets.annotations import AnnotationError, UnsafePathError
from real20m.evaluate.feature_io import FeatureFileError, load_features
from real20m.evaluate.metrics import DEFAULT_KS, RetrievalMetrics, format_table
from real20m.evaluate.index import DEFAULT_TRAIN_SIZE, IndexFileError, describe_gallery, read_index_meta
from real20m.evaluate.search import DEFAULT_GALLERY_CHUNK, DEFAULT_QUERY_CHUNK, is_exact, iter_search
from real20m.utils.entry import exit_on_input_error

REPORT_DEPTH = 10


def build_parser():
    parser = argparse.ArgumentParser(description="Real20M retrieval evaluation (Recall@K with Faiss)")
    parser.add_argument("--query_features", required=True, help="shard folder or legacy text feature file")
    parser.add_argument("--gallery_features", required=True, help="shard folder or legacy text feature file")
    parser.add_argument("--gt_file", required=True, help="ground truth: query_ref \\t doc_ref,doc_ref,...")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--task", default="retrieval", help="name shown in the report, e.g. video2goods")
    parser.add_argument("--index", default=None, help="faiss index_factory string (default: exact search)")
    parser.add_argument("--nprobe", type=int, default=None)
    parser.add_argument("--search_params", default=None, help="faiss ParameterSpace string, e.g. efSearch=128")
    parser.add_argument("--train_size", type=int, default=DEFAULT_TRAIN_SIZE,
                        help="gallery sample to train the index on")
    parser.add_argument("--shards", type=int, default=None,
                        help="split the gallery over N sub-indexes searched in parallel (one GPU each when present)")
    parser.add_argument("--save_index", default=None, help="folder to save the built index in")
    parser.add_argument("--load_index", default=None,
                        help="folder of an index saved for this gallery (searched without rebuilding; "
                             "--index defaults to the saved one)")
    parser.add_argument("--topk", type=int, default=1000)
    parser.add_argument("--chunk_size", type=int, default=DEFAULT_GALLERY_CHUNK, help="gallery rows per chunk")
    parser.add_argument("--query_chunk", type=int, default=DEFAULT_QUERY_CHUNK, help="queries per search call")
    parser.add_argument("--use_gpu", default="auto", choices=("auto", "never"))
    parser.add_argument("--report", action="store_true", help="write report.html (needs the item files)")
    parser.add_argument("--query_file", default=None, help="one-item-a-line file of the queries (report)")
    parser.add_argument("--gallery_file", default=None, help="one-item-a-line file of the gallery (report)")
    parser.add_argument("--goods_img_root", default=None, help="image root of goods items (report)")
    parser.add_argument("--photo_img_root", default=None, help="image root of videos (report)")
    parser.add_argument("--report_queries", type=int, default=20)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _search_and_score(args, index_name, queries, gallery, ground_truth):
    """Stream search results per query chunk into the metric accumulator; keep only the top few."""
    metrics = RetrievalMetrics(ground_truth, gallery.ids, DEFAULT_KS)
    saved_index = args.save_index or args.load_index
    top_rows = []
    for start, _, indices in iter_search(
            queries.feats, gallery.feats, args.topk, index_name, query_chunk=args.query_chunk,
            chunk_size=args.chunk_size, nprobe=args.nprobe, params=args.search_params,
            use_gpu=args.use_gpu, train_size=args.train_size, show_progress=not args.quiet,
            shards=args.shards, save_index=args.save_index, load_index=args.load_index,
            gallery_description=describe_gallery(gallery.ids) if saved_index else None):
        retrieved = np.where(indices >= 0, gallery.ids[np.maximum(indices, 0)], -1)
        metrics.update(queries.ids[start:start + len(indices)], retrieved)
        # A copy, not a view: a view would keep every chunk's whole (chunk, topk) array alive.
        top_rows.append(retrieved[:, :REPORT_DEPTH].copy())
    return metrics.result(), np.concatenate(top_rows) if top_rows else np.empty((0, 0), np.int64)


def run_evaluation(args):
    """Run the whole evaluation for parsed ``args``; returns the metrics dict (also in metrics.json)."""
    from real20m.datasets.annotations import load_ground_truth

    os.makedirs(args.output_dir, exist_ok=True)
    # A loaded index names its own factory (read before the features: a bad folder fails fast);
    # --index, when given too, must match it (checked on load).
    load_saved = args.load_index and is_exact(args.index)
    index_name = read_index_meta(args.load_index)["index"] if load_saved else args.index
    timings = {}
    started = time.perf_counter()
    queries = load_features(args.query_features)
    gallery = load_features(args.gallery_features)
    if queries.dim != gallery.dim:
        raise FeatureFileError(f"{args.gallery_features}: features of dimension {gallery.dim}, but the queries "
                               f"({args.query_features}) have dimension {queries.dim}")
    ground_truth = load_ground_truth(args.gt_file)
    timings["load_s"] = time.perf_counter() - started
    search_started = time.perf_counter()
    metrics, top_retrieved = _search_and_score(args, index_name, queries, gallery, ground_truth)
    timings["search_and_metrics_s"] = time.perf_counter() - search_started
    timings["total_s"] = time.perf_counter() - started
    query_ids = queries.ids
    del queries, gallery   # the feature matrices are not needed for plots and report

    metrics["task"] = args.task
    metrics["search"] = {"index": index_name or "exact", "nprobe": args.nprobe, "params": args.search_params,
                         "shards": args.shards, "loaded_index": args.load_index, "topk": args.topk,
                         "chunk_size": args.chunk_size, "query_chunk": args.query_chunk}
    metrics["timings"] = timings
    print(format_table(metrics))
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)

    from real20m.evaluate import report
    report.plot_recall(metrics, os.path.join(args.output_dir, "recall.png"))
    if args.report:
        _write_report(args, query_ids, top_retrieved, ground_truth, metrics)
    return metrics


def _write_report(args, query_ids, top_retrieved, ground_truth, metrics):
    from real20m.evaluate import report
    if not (args.query_file and args.gallery_file):
        raise ValueError("--report needs --query_file and --gallery_file to show titles and images")
    image_roots = {"goods": args.goods_img_root, "photo": args.photo_img_root}
    resolver = ItemFileResolver([args.query_file, args.gallery_file], image_roots)
    report.write_report(args.output_dir, args.task, query_ids, top_retrieved, ground_truth, metrics,
                        resolver, max_queries=args.report_queries)


class ItemFileResolver:
    """pid -> (text, image paths) from one-item-a-line files, for the report."""

    def __init__(self, item_files, image_roots):
        from real20m.datasets.annotations import SOURCES, load_items
        self.sources = SOURCES
        self.tables = [load_items(path) for path in item_files]
        self.rows = [dict(zip(table.pids.tolist(), range(len(table)))) for table in self.tables]
        self.image_roots = image_roots

    def __call__(self, pid):
        from real20m.datasets.annotations import UnsafePathError, safe_join
        for table, rows in zip(self.tables, self.rows):
            if pid in rows:
                row = rows[pid]
                query, frame_paths, _ = table.fields(row)
                source = self.sources[int(table.sources[row])]
                root = self.image_roots.get(source)
                if root is None:
                    return f"{source} {pid}: {query}", []
                frame_paths = frame_paths or [f"{pid % 50000}/{pid}.jpg"]
                paths = []
                for relative in frame_paths:
                    try:
                        paths.append(safe_join(root, relative))
                    except UnsafePathError:
                        continue   # never show a file outside the image root
                return f"{source} {pid}: {query}", paths
        return f"{pid} (not in the item files)", []


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if is_exact(args.index) and (args.shards not in (None, 1) or args.save_index) and not args.load_index:
        parser.error("--shards and --save_index need an approximate --index, e.g. --index IVF4096,SQ8 "
                     "(exact search already streams the gallery in chunks of --chunk_size rows)")
    exit_on_input_error(lambda: run_evaluation(args), (AnnotationError, UnsafePathError, FeatureFileError,
                                                               IndexFileError))


if __name__ == "__main__":
    main()
