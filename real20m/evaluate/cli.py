"""Feature files -> search -> Recall@K table, metrics.json, recall.png and report.html.

    python evaluation.py --query_features Q --gallery_features G --gt_file GT --output_dir D
    python -m real20m.evaluate ...   (same flags)

Feature paths are shard folders (native) or legacy text files. Search and metrics
import no torch: evaluation of a large gallery must stay within a small memory
budget on a CPU box. Only --report does (its item titles come from the dataset's
text function), and only after the search has released the feature matrices.
"""

import argparse
import json
import logging
import os
import time

import numpy as np

from real20m.datasets.annotations import AnnotationError, UnsafePathError, read_queries
from real20m.datasets.layout import relative_shard_path, shard_path
from real20m.evaluate.feature_io import FeatureFileError, load_features
from real20m.evaluate.metrics import DEFAULT_KS, RetrievalMetrics, format_table
from real20m.evaluate.faiss_backend import (USE_GPU_CHOICES, FaissNotInstalledError, SearchDeviceError,
                                            resolve_search_device)
from real20m.utils.entry import exit_on_input_error

try:
    from real20m.evaluate.index import DEFAULT_TRAIN_SIZE, IndexFileError, describe_gallery, read_index_meta
    from real20m.evaluate.search import (DEFAULT_GALLERY_CHUNK, DEFAULT_QUERY_CHUNK, gallery_ids_at, is_exact,
                                         iter_search)
except FaissNotInstalledError as error:
    # This module is the evaluation entry point: without Faiss it can do nothing, and the one
    # line naming the extra to install says more than an import traceback.
    raise SystemExit(f"error: {error}") from None

REPORT_DEPTH = 20   # results per query that the report shows
TOPK_IDS_FILE, TOPK_SCORES_FILE, TOPK_QUERIES_FILE = "search_res.npy", "search_res_dis.npy", "search_res_queries.npy"


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
    parser.add_argument("--topk", type=int, default=1000, help="search depth the metrics are computed at")
    parser.add_argument("--save_topk", type=_non_negative, default=0,
                        help=f"save the top K gallery ids and scores of every query as {TOPK_IDS_FILE} (int64) and "
                             f"{TOPK_SCORES_FILE} (float32), rows in query-feature order (ids in "
                             f"{TOPK_QUERIES_FILE}); id -1 and score -inf past the last result (0: off)")
    parser.add_argument("--chunk_size", type=int, default=DEFAULT_GALLERY_CHUNK, help="gallery rows per chunk")
    parser.add_argument("--query_chunk", type=int, default=DEFAULT_QUERY_CHUNK, help="queries per search call")
    parser.add_argument("--use_gpu", default="auto", type=str.lower, choices=USE_GPU_CHOICES,
                        help="search on GPUs: auto (when the Faiss build sees one; the log says when it "
                             "falls back to the CPU), always (or fail), never")
    parser.add_argument("--report", action="store_true", help="write report.html (needs the item files)")
    parser.add_argument("--query_file", default=None, help="one-item-a-line file of the queries (report)")
    parser.add_argument("--query_texts", default=None,
                        help="text queries, qid<TAB>query text (report: each query shown as its text, with no "
                             "frames; instead of --query_file)")
    parser.add_argument("--gallery_file", default=None, help="one-item-a-line file of the gallery (report)")
    parser.add_argument("--goods_img_root", default=None, help="image root of goods items (report)")
    parser.add_argument("--photo_img_root", default=None, help="image root of videos (report)")
    parser.add_argument("--goods_text_root", default=None,
                        help="text root of goods items (report; default: 'text' next to --goods_img_root)")
    parser.add_argument("--photo_text_root", default=None,
                        help="text root of videos (report; default: 'text' next to --photo_img_root)")
    parser.add_argument("--report_queries", type=_report_queries, default=20,
                        help="queries shown in report.html, or 'all' (pages of at most 100 queries each)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _non_negative(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _report_queries(text):
    """``--report_queries``: a positive count, or ``all`` (None: no limit)."""
    if text == "all":
        return None
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'all', got {text!r}")
    return count


class TopKWriter:
    """Fills search_res*.npy of the whole query set chunk by chunk (memory-mapped, never all in RAM).

    The files appear under their final names only when every row is written.
    """

    def __init__(self, out_dir, query_ids, k):
        self.k = k
        self.paths = [os.path.join(out_dir, name) for name in (TOPK_IDS_FILE, TOPK_SCORES_FILE)]
        shape = (len(query_ids), k)
        self.ids = np.lib.format.open_memmap(self.paths[0] + ".tmp", "w+", np.int64, shape)
        self.scores = np.lib.format.open_memmap(self.paths[1] + ".tmp", "w+", np.float32, shape)
        np.save(os.path.join(out_dir, TOPK_QUERIES_FILE), np.asarray(query_ids, dtype=np.int64))

    def add(self, start, retrieved, scores):
        """Rows of queries start.. : columns past the gallery's results get id -1 and score -inf."""
        rows = slice(start, start + len(retrieved))
        depth = min(self.k, retrieved.shape[1])
        self.ids[rows], self.scores[rows] = -1, -np.inf
        self.ids[rows, :depth] = retrieved[:, :depth]
        self.scores[rows, :depth] = np.where(retrieved[:, :depth] >= 0, scores[:, :depth], -np.inf)

    def finish(self):
        self.ids.flush()
        self.scores.flush()
        del self.ids, self.scores   # close the mappings before the files take their final names
        for path in self.paths:
            os.replace(path + ".tmp", path)


def _search_and_score(args, index_name, queries, gallery, ground_truth, search_info=None):
    """Stream search results per query chunk into the metric accumulator; keep only the top few.

    Returns (metrics, (Q, REPORT_DEPTH) retrieved ids, their scores). With --save_topk deeper than
    --topk the search goes that deep, and the metrics still see only the first --topk columns.
    """
    metrics = RetrievalMetrics(ground_truth, gallery.ids, DEFAULT_KS)
    saved_index = args.save_index or args.load_index
    topk_writer = TopKWriter(args.output_dir, queries.ids, args.save_topk) if args.save_topk else None
    top_rows, top_scores = [], []
    for start, scores, indices in iter_search(
            queries.feats, gallery.feats, max(args.topk, args.save_topk), index_name, query_chunk=args.query_chunk,
            chunk_size=args.chunk_size, nprobe=args.nprobe, params=args.search_params,
            use_gpu=args.use_gpu, train_size=args.train_size, show_progress=not args.quiet,
            shards=args.shards, save_index=args.save_index, load_index=args.load_index,
            gallery_description=describe_gallery(gallery.ids) if saved_index else None, info=search_info):
        retrieved = gallery_ids_at(gallery.ids, indices)
        metrics.update(queries.ids[start:start + len(indices)], retrieved[:, :args.topk])
        if topk_writer is not None:
            topk_writer.add(start, retrieved, scores)
        # Copies, not views: a view would keep every chunk's whole (chunk, depth) array alive.
        top_rows.append(retrieved[:, :REPORT_DEPTH].copy())
        top_scores.append(scores[:, :REPORT_DEPTH].copy())
        del scores, indices, retrieved   # not alive beside the next chunk's search (peak memory)
    if topk_writer is not None:
        topk_writer.finish()
    if not top_rows:
        return metrics.result(), np.empty((0, 0), np.int64), np.empty((0, 0), np.float32)
    return metrics.result(), np.concatenate(top_rows), np.concatenate(top_scores)


def run_evaluation(args):
    """Run the whole evaluation for parsed ``args``; returns the metrics dict (also in metrics.json)."""
    from real20m.datasets.annotations import load_ground_truth

    if args.use_gpu == "always":
        resolve_search_device("always")   # no GPU: fail before loading a gallery of millions
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
    search_info = {}   # filled by the search: index factory, device, Faiss version and build
    metrics, top_retrieved, top_scores = _search_and_score(args, index_name, queries, gallery, ground_truth,
                                                           search_info)
    timings["search_and_metrics_s"] = time.perf_counter() - search_started
    timings["total_s"] = time.perf_counter() - started
    query_ids = queries.ids
    del queries, gallery   # the feature matrices are not needed for plots and report

    metrics["task"] = args.task
    metrics["search"] = {"index": search_info["index_factory"], "nprobe": args.nprobe, "params": args.search_params,
                         "shards": args.shards, "loaded_index": args.load_index, "topk": args.topk,
                         "chunk_size": args.chunk_size, "query_chunk": args.query_chunk,
                         "save_topk": args.save_topk, "use_gpu": args.use_gpu, "device": search_info["device"],
                         "num_gpus": search_info["num_gpus"], "device_note": search_info["device_note"],
                         "faiss_version": search_info["faiss_version"], "faiss_build": search_info["faiss_build"]}
    metrics["timings"] = timings
    print(format_table(metrics))
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)

    from real20m.evaluate import report
    report.plot_recall(metrics, os.path.join(args.output_dir, "recall.png"))
    if args.report:
        _write_report(args, query_ids, top_retrieved, top_scores, ground_truth, metrics)
    return metrics


def _write_report(args, query_ids, top_retrieved, top_scores, ground_truth, metrics):
    from real20m.evaluate import report
    if not (args.gallery_file and (args.query_file or args.query_texts)):
        raise ValueError("--report needs --gallery_file and the queries' --query_file (items) or --query_texts "
                         "(text queries) to show titles and images")
    image_roots = {"goods": args.goods_img_root, "photo": args.photo_img_root}
    text_roots = {"goods": args.goods_text_root or _sibling_text_root(args.goods_img_root),
                  "photo": args.photo_text_root or _sibling_text_root(args.photo_img_root)}
    item_files = [path for path in (args.query_file, args.gallery_file) if path]
    resolver = ItemFileResolver(item_files, image_roots, text_roots)
    report.write_report(args.output_dir, args.task, query_ids, top_retrieved, ground_truth, metrics,
                        resolver, max_queries=args.report_queries, scores=top_scores,
                        query_texts=_query_texts(args.query_texts))


def _query_texts(path):
    """qid -> query text of a text-query file; None without one."""
    if not path:
        return None
    qids, texts = read_queries(path)
    return dict(zip(qids.tolist(), texts))


def _sibling_text_root(image_root):
    """``<source>/text`` next to ``<source>/images``, where the Real400K layout keeps the text files."""
    if image_root and os.path.basename(os.path.normpath(image_root)) == "images":
        return os.path.join(os.path.dirname(os.path.normpath(image_root)), "text")
    return None


class ItemFileResolver:
    """pid -> (title, image paths) from one-item-a-line files, for the report.

    The title is the item's own text (goods: the title line; videos: title|text|caption), read
    from its text file as evaluation reads it; the item file's query column is not the item's title.
    """

    def __init__(self, item_files, image_roots, text_roots):
        from real20m.datasets.annotations import SOURCES, load_items
        self.sources = SOURCES
        self.tables = [load_items(path) for path in item_files]
        self.rows = [dict(zip(table.pids.tolist(), range(len(table)))) for table in self.tables]
        self.image_roots = image_roots
        self.text_roots = text_roots

    def __call__(self, pid):
        for table, rows in zip(self.tables, self.rows):
            if pid in rows:
                row = rows[pid]
                _, frame_paths, text_path = table.fields(row)
                source = int(table.sources[row])
                name = self.sources[source]
                title = self._title(pid, source, text_path)
                return title, self._image_paths(pid, self.image_roots.get(name), frame_paths)
        return f"{pid} (not in the item files)", []

    def _title(self, pid, source, text_path):
        # items.py imports torch: only a report pays for that, after the search has freed its memory.
        from real20m.datasets.annotations import UnsafePathError, safe_join
        from real20m.datasets.items import item_text
        root = self.text_roots.get(self.sources[source])
        if root is None:
            return f"{pid} (no text root for {self.sources[source]})"
        try:
            path = safe_join(root, text_path) if text_path else shard_path(root, pid, "txt")
        except UnsafePathError:
            return f"{pid} (text path outside the text root)"
        issues = []
        title = item_text(path, source, issues)
        if issues and issues[0][0] == "missing_text":
            return f"{pid} (no text file)"
        return title or f"{pid} (empty title)"

    @staticmethod
    def _image_paths(pid, root, frame_paths):
        from real20m.datasets.annotations import UnsafePathError, safe_join
        if root is None:
            return []
        paths = []
        for relative in frame_paths or [relative_shard_path(pid, "jpg")]:
            try:
                paths.append(safe_join(root, relative))
            except UnsafePathError:
                continue   # never show a file outside the image root
        return paths


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    # The package's notes (a k clamped to the gallery size, the search device) as plain lines.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("real20m").setLevel(logging.INFO)
    if is_exact(args.index) and (args.shards not in (None, 1) or args.save_index) and not args.load_index:
        parser.error("--shards and --save_index need an approximate --index, e.g. --index IVF4096,SQ8 "
                     "(exact search already streams the gallery in chunks of --chunk_size rows)")
    exit_on_input_error(lambda: run_evaluation(args), (AnnotationError, UnsafePathError, FeatureFileError,
                                                               IndexFileError, SearchDeviceError))


if __name__ == "__main__":
    main()
