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

from real20m.datasets.annotations import read_queries
from real20m.evaluate.bootstrap import BootstrapSettings
from real20m.evaluate.distractor_curve import DistractorCurveSettings, distractor_curve
from real20m.evaluate.feature_io import FeatureFileError, load_features
from real20m.evaluate.metrics import DEFAULT_KS, RetrievalMetrics, format_table
from real20m.evaluate.faiss_backend import USE_GPU_CHOICES, resolve_search_device
from real20m.evaluate.request import EvaluationRequest, ReportOptions
from real20m.evaluate.search import gallery_ids_at, iter_search
from real20m.evaluate.search_config import (DEFAULT_GALLERY_CHUNK, DEFAULT_QUERY_CHUNK, DEFAULT_TRAIN_SIZE,
                                            SearchConfig)
from real20m.evaluate.searchers import SEARCH_BACKENDS, backend_for, describe_gallery, open_searcher
from real20m.utils.atomic import publish
from real20m.utils.entry import exit_on_input_error

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
    parser.add_argument("--search_backend", default=None, choices=sorted(SEARCH_BACKENDS),
                        help="search backend (default: exact, faiss with --index, or the --load_index folder's)")
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
    parser.add_argument("--bootstrap_samples", type=_non_negative, default=1000,
                        help="resamples of the queries for the 95%% intervals of Recall@K and hit@K (0: off)")
    parser.add_argument("--bootstrap_seed", type=int, default=0, help="seed of the bootstrap resamples")
    parser.add_argument("--distractor_curve", action="store_true",
                        help="also compute Recall@10 as the gallery grows from the ground-truth items to the whole "
                             "gallery (5 steps, each an exact search; slow on a large gallery)")
    parser.add_argument("--distractor_seed", type=int, default=0,
                        help="seed of the order the distractor curve adds non-ground-truth items in")
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
            publish(path + ".tmp", path)


def _open_searcher(request, gallery):
    """The searcher of ``request.search`` over the gallery features (a saved index is checked against its ids)."""
    config = request.search
    saved_index = config.save_index or config.load_index
    return open_searcher(gallery.feats, config, depth=request.depth,
                         gallery_description=describe_gallery(gallery.ids) if saved_index else None)


def _search_and_score(request, searcher, queries, gallery_ids, ground_truth):
    """Stream search results per query chunk into the metric accumulator; keep only the top few.

    Returns (metrics, (Q, REPORT_DEPTH) retrieved ids, their scores). With --save_topk deeper than
    --topk the search goes that deep, and the metrics still see only the first --topk columns.
    """
    metrics = RetrievalMetrics(ground_truth, gallery_ids, DEFAULT_KS, request.bootstrap)
    topk_writer = TopKWriter(request.output_dir, queries.ids, request.save_topk) if request.save_topk else None
    top_rows, top_scores = [], []
    config = request.search
    for start, scores, indices in iter_search(queries.feats, searcher, request.depth, config.query_chunk,
                                              config.show_progress):
        retrieved = gallery_ids_at(gallery_ids, indices)
        metrics.update(queries.ids[start:start + len(indices)], retrieved[:, :request.topk])
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


def _search_record(request, described):
    """metrics.json's "search": what was asked (``request``) and what ran (the searcher's ``describe()``)."""
    config = request.search
    asked = {"nprobe": config.nprobe, "params": config.params, "shards": config.shards,
             "loaded_index": config.load_index, "topk": request.topk, "chunk_size": config.chunk_size,
             "query_chunk": config.query_chunk, "save_topk": request.save_topk, "use_gpu": config.use_gpu}
    ran = {key: described[key] for key in ("device", "num_gpus", "device_note", "faiss_version", "faiss_build")}
    return {"index": described["index"], **asked, **ran}


def run_evaluation(request: EvaluationRequest):
    """Run the whole evaluation ``request`` asks for; returns the metrics dict (also in metrics.json)."""
    from real20m.datasets.annotations import load_ground_truth

    if request.search.use_gpu == "always":
        resolve_search_device("always")   # no GPU: fail before loading a gallery of millions
    os.makedirs(request.output_dir, exist_ok=True)
    backend_for(request.search)   # a bad saved index folder fails fast too
    timings = {}
    started = time.perf_counter()
    queries = load_features(request.query_features)
    gallery = load_features(request.gallery_features)
    if queries.dim != gallery.dim:
        raise FeatureFileError(f"{request.gallery_features}: features of dimension {gallery.dim}, but the queries "
                               f"({request.query_features}) have dimension {queries.dim}")
    ground_truth = load_ground_truth(request.gt_file)
    timings["load_s"] = time.perf_counter() - started
    search_started = time.perf_counter()
    searcher = _open_searcher(request, gallery)
    scores, top_retrieved, top_scores = _search_and_score(request, searcher, queries, gallery.ids, ground_truth)
    timings["search_and_metrics_s"] = time.perf_counter() - search_started
    timings["total_s"] = time.perf_counter() - started
    query_ids = queries.ids
    described = searcher.describe()
    del searcher
    curve = _distractor_curve(request, queries, gallery, ground_truth, timings)
    del queries, gallery   # the feature matrices are not needed for plots and report

    metrics = dict(scores)   # the flat view metrics.json keeps: recall@10, ..., then the counters
    metrics["task"] = request.task
    metrics["search"] = _search_record(request, described)
    metrics["timings"] = timings
    metrics.update(scores.spread_record())
    if curve is not None:
        metrics["distractor_curve"] = [point.record() for point in curve]
        metrics["distractor_seed"] = request.distractor_curve.seed
    print(format_table(scores))
    with open(os.path.join(request.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)

    from real20m.evaluate import report
    report.plot_recall(scores, os.path.join(request.output_dir, "recall.png"), request.task, curve)
    if request.report is not None:
        _write_report(request, report.FoundItems(query_ids, top_retrieved, ground_truth, scores, top_scores))
    return metrics


def _distractor_curve(request, queries, gallery, ground_truth, timings):
    """The distractor curve's points (None when not asked for); its time goes into ``timings``."""
    if request.distractor_curve is None:
        return None
    started = time.perf_counter()
    curve = distractor_curve(queries, gallery, ground_truth, request.distractor_curve, request.search)
    timings["distractor_curve_s"] = time.perf_counter() - started
    return curve


def _write_report(request, found):
    from real20m.evaluate import report
    from real20m.evaluate.item_lookup import ItemFolders, ItemLookup
    options = request.report
    if not (options.gallery_file and (options.query_file or options.query_texts)):
        raise ValueError("--report needs --gallery_file and the queries' --query_file (items) or --query_texts "
                         "(text queries) to show titles and images")
    folders = ItemFolders.of({"goods": options.goods_img_root, "photo": options.photo_img_root},
                             {"goods": options.goods_text_root, "photo": options.photo_text_root})
    lookup = ItemLookup([path for path in (options.query_file, options.gallery_file) if path], folders)
    report.write_report(request.output_dir, request.task, found, lookup, query_texts=_query_texts(options.query_texts),
                        max_queries=options.max_queries)


def _query_texts(path):
    """qid -> query text of a text-query file; None without one."""
    if not path:
        return None
    qids, texts = read_queries(path)
    return dict(zip(qids.tolist(), texts))


def search_config_from_args(args) -> SearchConfig:
    return SearchConfig(index=args.index, backend=args.search_backend, nprobe=args.nprobe, params=args.search_params,
                        shards=args.shards, train_size=args.train_size, chunk_size=args.chunk_size,
                        query_chunk=args.query_chunk, use_gpu=args.use_gpu, save_index=args.save_index,
                        load_index=args.load_index, show_progress=not args.quiet)


def report_options_from_args(args) -> ReportOptions | None:
    if not args.report:
        return None
    return ReportOptions(query_file=args.query_file, query_texts=args.query_texts, gallery_file=args.gallery_file,
                         goods_img_root=args.goods_img_root, photo_img_root=args.photo_img_root,
                         goods_text_root=args.goods_text_root, photo_text_root=args.photo_text_root,
                         max_queries=args.report_queries)


def request_from_args(args) -> EvaluationRequest:
    """The typed request of parsed command-line ``args``."""
    return EvaluationRequest(query_features=args.query_features, gallery_features=args.gallery_features,
                             gt_file=args.gt_file, output_dir=args.output_dir, search=search_config_from_args(args),
                             task=args.task, topk=args.topk, save_topk=args.save_topk,
                             report=report_options_from_args(args),
                             bootstrap=BootstrapSettings(samples=args.bootstrap_samples, seed=args.bootstrap_seed),
                             distractor_curve=(DistractorCurveSettings(seed=args.distractor_seed)
                                               if args.distractor_curve else None))


def parse_request(argv=None) -> EvaluationRequest:
    """``argv`` parsed and checked (usage errors exit as argparse does) into an EvaluationRequest."""
    parser = build_parser()
    request = request_from_args(parser.parse_args(argv))
    config = request.search
    builds_exact = not config.load_index and backend_for(config).name == "exact"
    if builds_exact and (config.shards not in (None, 1) or config.save_index):
        parser.error("--shards and --save_index need an approximate --index, e.g. --index IVF4096,SQ8 "
                     "(exact search already streams the gallery in chunks of --chunk_size rows)")
    return request


def main(argv=None):
    request = parse_request(argv)
    # The package's notes (a k clamped to the gallery size, the search device) as plain lines.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("real20m").setLevel(logging.INFO)
    exit_on_input_error(lambda: run_evaluation(request))


if __name__ == "__main__":
    main()
