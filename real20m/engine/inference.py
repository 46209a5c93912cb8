"""``--evaluate``: embed every item of a test file with a trained (or untrained) model.

The model comes from a ``real20m.model_source`` source, inspected once by the entry point: our
training checkpoint, a checkpoint in the paper's release layout, an exported model, or ``--resume
init`` (the untrained model with the run's seed, the baseline that shows what training bought).
"""
from __future__ import annotations

import logging
import os

import torch

from real20m.config import Config, log_configuration_notes, write_config
from real20m.engine.distributed import cleanup_distributed, init_distributed
from real20m.evaluate.encoder import Encoder
from real20m.evaluate.extract import ExtractionSettings, extract_features
from real20m.evaluate.feature_io import load_features, write_legacy_features
from real20m.factory import build_collator, build_eval_data
from real20m.model_source import ModelSource
from real20m.utils.logging import setup_logging

logger = logging.getLogger(__name__)


def write_features(cfg: Config, source: ModelSource) -> int:
    """Embed ``cfg.data.test_file`` with the model of ``source`` into ``cfg.run.output_dir``."""
    if not cfg.data.test_file:
        raise ValueError("--evaluate needs --test_file (the items to embed)")
    dist = init_distributed(cfg.run.dist_timeout)
    setup_logging(cfg.run.output_dir, dist.rank)
    log_configuration_notes(cfg)
    try:
        model, tokenizer = source.load(cfg, dist.is_main)
        data = cfg.data
        if dist.is_main:
            write_config(cfg, cfg.run.output_dir)
        model.to(dist.device)
        if dist.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in fp32
        # A rerun continues only an extraction of the same checkpoint with the same input settings.
        resume_key = {"checkpoint": cfg.run.resume, "data": cfg.to_dict()["data"]}
        settings = ExtractionSettings(data.batch_size, data.workers, dtype=cfg.run.feature_dtype,
                                      partition_size=cfg.run.feature_partition_size, resume_key=resume_key)
        count = extract_features(Encoder.for_config(model, cfg, dist.device), build_eval_data(data, data.test_file),
                                 build_collator(data, tokenizer), dist, cfg.run.output_dir, settings)
        if dist.is_main and cfg.run.legacy_text_features:
            features = load_features(cfg.run.output_dir)
            write_legacy_features(os.path.join(cfg.run.output_dir, "features.feat"), features.ids, features.feats)
        if dist.is_main:
            logger.info("wrote %d features of %s to %s", count, data.test_file, cfg.run.output_dir)
        return count
    finally:
        cleanup_distributed()
