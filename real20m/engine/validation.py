"""Validation during training (``--val_freq N``): Recall@K of both item tasks on a held-out split.

Every process embeds its share of the validation items with the project's extraction (the same
code as ``--evaluate``); rank 0 searches exactly and scores. The RNG states of the run are saved
before and restored after, so a run with validation trains exactly as one without it.

The score that decides the best model is the mean Recall@10 of video->goods and goods->video
(Recall@K at the deepest K reported, for a gallery of fewer than 10 items). Every registered metric
is scored; those whose display has a ``log_label`` are logged (metric_registry.py).
"""
from __future__ import annotations

import os
import shutil

import numpy as np

from real20m.config import VALIDATION_FILES
from real20m.datasets.annotations import load_ground_truth
from real20m.evaluate.encoder import Encoder
from real20m.evaluate.extract import ExtractionSettings, extract_features
from real20m.evaluate.feature_io import load_features
from real20m.evaluate.metric_registry import METRICS, Metric
from real20m.evaluate.metrics import RetrievalScores, compute_metrics
from real20m.evaluate.search import gallery_ids_at, search
from real20m.evaluate.search_config import SearchConfig
from real20m.factory import build_eval_data
from real20m.utils.distributed import barrier
from real20m.utils.seeding import rng_state, set_rng_state


VIDEO_QUERIES, GOODS_GALLERY, GT_VIDEO2GOODS, GT_GOODS2VIDEO = VALIDATION_FILES
TASKS = {"video2goods": (VIDEO_QUERIES, GOODS_GALLERY, GT_VIDEO2GOODS),
         "goods2video": (GOODS_GALLERY, VIDEO_QUERIES, GT_GOODS2VIDEO)}
KS = (1, 5, 10, 20, 50, 100)
EXACT_ON_CPU = SearchConfig(use_gpu="never", show_progress=False)
LOGGED_KS = (1, 10, 100)
SELECTION_METRIC, SELECTION_K = "recall", 10


def selection_recall(scores: RetrievalScores) -> float:
    """Recall@10, or Recall@K at the deepest K reported when the gallery holds fewer than 10 items."""
    recall = scores.at(SELECTION_METRIC)
    return recall[max(k for k in recall if k <= SELECTION_K)]


def selection_score(results: dict[str, RetrievalScores]) -> float:
    """Mean Recall@10 over the tasks: higher is better."""
    return float(np.mean([selection_recall(metrics) for metrics in results.values()]))


def logged_metrics() -> list[Metric]:
    """The metrics validation logs, in the registry's order."""
    return [metric for metric in METRICS.values() if metric.display.log_label]


def summary(results: dict[str, RetrievalScores]) -> str:
    """The log line's figures per task: ``video2goods R@1 0.1250 (chance 0.1250) R@10 ...``."""
    return "; ".join(f"{task} " + " ".join(_logged_figures(scores)) for task, scores in results.items())


def _logged_figures(scores: RetrievalScores):
    for metric in logged_metrics():
        values = scores.at(metric.name)
        chance = scores.at(metric.display.chance) if metric.display.chance else {}
        for k in (k for k in LOGGED_KS if k in values):
            figure = f"{metric.display.log_label}@{k} {values[k]:.4f}"
            yield figure + (f" (chance {chance[k]:.4f})" if k in chance else "")


def score_task(query_dir: str, gallery_dir: str, gt_file: str) -> RetrievalScores:
    """Every registered metric (Recall/hit/mAP@K, chance levels, ...) of one task from two feature
    folders, exact search."""
    queries, gallery = load_features(query_dir), load_features(gallery_dir)
    depth = min(max(KS), len(gallery.ids))
    _, rows = search(queries.feats, gallery.feats, depth, EXACT_ON_CPU)
    return compute_metrics(queries.ids, gallery_ids_at(gallery.ids, rows), load_ground_truth(gt_file), gallery.ids, KS)


class Validator:
    """Embeds the validation items into ``out_dir/features`` (overwritten each time) and scores them."""

    def __init__(self, val_dir: str, data_cfg, collate, dist, out_dir: str, batch_size: int, workers: int):
        self.val_dir = val_dir
        self.datasets = {name: build_eval_data(data_cfg, os.path.join(val_dir, name))
                         for name in (VIDEO_QUERIES, GOODS_GALLERY)}
        self.collate = collate
        self.dist = dist
        self.out_dir = out_dir
        self.batch_size = batch_size
        self.workers = workers

    def feature_dir(self, item_file: str) -> str:
        return os.path.join(self.out_dir, "features", item_file.removesuffix(".txt"))

    def __call__(self, model) -> dict[str, dict] | None:
        """{task: metrics} on rank 0 (None elsewhere); the model is left in eval mode."""
        saved = rng_state()
        try:
            if self.dist.is_main:   # the previous validation's features are of other weights
                shutil.rmtree(os.path.join(self.out_dir, "features"), ignore_errors=True)
            barrier()
            encoder = Encoder(model, self.dist.device)   # fp32, as training scores the model
            for name, dataset in self.datasets.items():
                extract_features(encoder, dataset, self.collate, self.dist, self.feature_dir(name),
                                 ExtractionSettings(self.batch_size, self.workers))
            results = None
            if self.dist.is_main:
                results = {task: score_task(self.feature_dir(queries), self.feature_dir(gallery),
                                            os.path.join(self.val_dir, gt))
                           for task, (queries, gallery, gt) in TASKS.items()}
            barrier()
            return results
        finally:
            set_rng_state(saved)
