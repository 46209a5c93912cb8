"""Validation during training (``--val_freq N``): Recall@K of both item tasks on a held-out split.

Every process embeds its share of the validation items with the project's extraction (the same
code as ``--evaluate``); rank 0 searches exactly and scores. The RNG states of the run are saved
before and restored after, so a run with validation trains exactly as one without it.

The score that decides the best model is the mean Recall@10 of video->goods and goods->video
(Recall@K at the deepest K reported, for a gallery of fewer than 10 items).
"""
from __future__ import annotations

import os
import shutil

import numpy as np

from real20m.config import VALIDATION_FILES
from real20m.datasets.annotations import load_ground_truth
from real20m.engine.distributed import barrier
from real20m.evaluate.extract import extract_features
from real20m.evaluate.feature_io import load_features
from real20m.evaluate.metrics import compute_metrics
from real20m.evaluate.search import gallery_ids_at, search
from real20m.factory import build_eval_data
from real20m.utils.seeding import rng_state, set_rng_state


VIDEO_QUERIES, GOODS_GALLERY, GT_VIDEO2GOODS, GT_GOODS2VIDEO = VALIDATION_FILES
TASKS = {"video2goods": (VIDEO_QUERIES, GOODS_GALLERY, GT_VIDEO2GOODS),
         "goods2video": (GOODS_GALLERY, VIDEO_QUERIES, GT_GOODS2VIDEO)}
KS = (1, 5, 10, 20, 50, 100)
LOGGED_KS = (1, 10, 100)
SELECTION_K = 10


def selection_recall(metrics: dict) -> float:
    """Recall@10, or Recall@K at the deepest K reported when the gallery holds fewer than 10 items."""
    ks = [int(key.split("@")[1]) for key in metrics if key.startswith("recall@")]
    return metrics[f"recall@{max(k for k in ks if k <= SELECTION_K)}"]


def selection_score(results: dict[str, dict]) -> float:
    """Mean Recall@10 over the tasks: higher is better."""
    return float(np.mean([selection_recall(metrics) for metrics in results.values()]))


def score_task(query_dir: str, gallery_dir: str, gt_file: str) -> dict:
    """Recall/hit/mAP@K (and chance levels) of one task from two feature folders, exact search."""
    queries, gallery = load_features(query_dir), load_features(gallery_dir)
    depth = min(max(KS), len(gallery.ids))
    _, rows = search(queries.feats, gallery.feats, depth, use_gpu="never", show_progress=False)
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
            for name, dataset in self.datasets.items():
                extract_features(model, dataset, self.collate, self.dist, self.feature_dir(name),
                                 self.batch_size, self.workers)
            results = None
            if self.dist.is_main:
                results = {task: score_task(self.feature_dir(queries), self.feature_dir(gallery),
                                            os.path.join(self.val_dir, gt))
                           for task, (queries, gallery, gt) in TASKS.items()}
            barrier()
            return results
        finally:
            set_rng_state(saved)
