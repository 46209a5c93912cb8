"""``--evaluate``: embed every item of a test file with a trained (or untrained) model.

The model comes from one of: our training checkpoint (it carries its model configuration and
tokenizer), a checkpoint in the paper's release layout, or ``--resume init`` — the untrained model
with the run's seed, the baseline that shows what training bought.
"""
from __future__ import annotations

import argparse
import json
import logging
import os

from real20m.datasets import Collator, build_eval_dataset, build_tokenizer, build_train_dataset
from real20m.engine.builders import make_model, prepare_tokenizer, restore_tokenizer
from real20m.engine.checkpoint import load_checkpoint
from real20m.engine.distributed import DistEnv, cleanup_distributed, init_distributed
from real20m.evaluate.extract import extract_features
from real20m.evaluate.feature_io import load_features, write_legacy_features
from real20m.models.convert import build_model_from_release_config, is_release_checkpoint, load_weights_into
from real20m.utils.logging import setup_logging

logger = logging.getLogger(__name__)

UNTRAINED = "init"


# Input shapes the model was trained with; evaluating with other values would feed it inputs it
# never saw (or cannot take: a from-scratch ViT has a fixed image size).
TRAINED_INPUT_SETTINGS = ("image_size", "clip_length", "max_query_len", "max_title_len")


def adopt_input_settings(cfg: argparse.Namespace, trained_args: dict) -> None:
    for name in TRAINED_INPUT_SETTINGS:
        if name in trained_args and trained_args[name] != getattr(cfg, name):
            logger.info("using the checkpoint's %s = %s (not %s)", name, trained_args[name], getattr(cfg, name))
            setattr(cfg, name, trained_args[name])


def load_release_config(path: str | None) -> dict | None:
    if path is None:
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def load_model_for_inference(cfg: argparse.Namespace, dist: DistEnv):
    """(model, tokenizer) described by ``cfg.resume``; see the module docstring."""
    if not cfg.resume or cfg.resume == UNTRAINED:
        texts = build_train_dataset(cfg).training_texts() if dist.is_main else None
        tokenizer = prepare_tokenizer(cfg, texts, dist.is_main)
        logger.info("evaluating the UNTRAINED model (seed %d)", cfg.seed)
        return make_model(cfg.model, tokenizer, cfg.seed, cfg.compat), tokenizer

    checkpoint = load_checkpoint(cfg.resume)
    if is_release_checkpoint(checkpoint):
        if not cfg.tokenizer:
            raise ValueError("a checkpoint in the paper's release layout needs --tokenizer: the Chinese "
                             "RoBERTa-wwm-ext vocabulary (hub name or local folder)")
        tokenizer = build_tokenizer(cfg.tokenizer, None, None)
        model = build_model_from_release_config(load_release_config(cfg.release_config))
        model.use_title_mask = cfg.compat != "original"
    else:
        adopt_input_settings(cfg, checkpoint.get("args", {}))
        model_cfg = checkpoint.get("model_cfg") or cfg.model
        files = checkpoint.get("tokenizer_files")
        if files:
            tokenizer = restore_tokenizer(files, cfg.output_dir)
        else:
            tokenizer = build_tokenizer(cfg.tokenizer or model_cfg.get("pretrained"), None, None)
        model = make_model(model_cfg, tokenizer, cfg.seed, cfg.compat)
    load_weights_into(model, checkpoint)
    logger.info("loaded %s", cfg.resume)
    return model, tokenizer


def write_features(cfg: argparse.Namespace) -> int:
    if not cfg.test_file:
        raise ValueError("--evaluate needs --test_file (the items to embed)")
    dist = init_distributed(cfg.dist_timeout)
    setup_logging(cfg.output_dir, dist.rank)
    try:
        model, tokenizer = load_model_for_inference(cfg, dist)
        model.to(dist.device)
        dataset = build_eval_dataset(cfg, cfg.test_file)
        collate = Collator(tokenizer, cfg.max_query_len, cfg.max_title_len)
        count = extract_features(model, dataset, collate, dist, cfg.output_dir, cfg.batch_size,
                                 cfg.workers, cfg.feature_dtype)
        if dist.is_main and cfg.legacy_text_features:
            features = load_features(cfg.output_dir)
            write_legacy_features(os.path.join(cfg.output_dir, "features.feat"), features.ids, features.feats)
        if dist.is_main:
            logger.info("wrote %d features of %s to %s", count, cfg.test_file, cfg.output_dir)
        return count
    finally:
        cleanup_distributed()
