"""``--evaluate``: embed every item of a test file with a trained (or untrained) model.

The model comes from one of: our training checkpoint (it carries its resolved configuration,
model architecture and tokenizer), a checkpoint in the paper's release layout, or ``--resume
init`` — the untrained model with the run's seed, the baseline that shows what training bought.
"""
from __future__ import annotations

import logging
import os

import torch

from real20m.assets import CHINESE_BERT_VOCAB_DIR
from real20m.config import Config, log_configuration_notes, override, write_config
from real20m.datasets import DeviceJpegDecoder, build_tokenizer, build_train_dataset
from real20m.engine.checkpoint import load_checkpoint
from real20m.engine.distributed import DistEnv, cleanup_distributed, init_distributed
from real20m.evaluate.extract import extract_features
from real20m.evaluate.feature_io import load_features, write_legacy_features
from real20m.factory import build_collator, build_eval_data, build_model, build_tokenizer_for, load_weights, \
    release_towers, restore_tokenizer, with_embedding_inputs
from real20m.models.release_layout import is_release_checkpoint
from real20m.utils.logging import setup_logging

logger = logging.getLogger(__name__)

UNTRAINED = "init"

# Input settings the model was trained with; evaluating with other values would feed it inputs it
# never saw (or cannot take: a from-scratch ViT has a fixed image size; an English model, Chinese titles).
TRAINED_INPUT_SETTINGS = ("image_size", "clip_length", "max_query_len", "max_title_len", "query_language")


def with_trained_inputs(cfg: Config, trained: dict, checkpoint_path: str) -> Config:
    """The evaluation's configuration with the checkpoint's input settings (each change logged)."""
    changes = {name: trained[name] for name in TRAINED_INPUT_SETTINGS
               if name in trained and trained[name] != getattr(cfg.data, name)}
    for name, value in changes.items():
        logger.info("using the checkpoint's %s = %s (not %s)", name, value, getattr(cfg.data, name))
    return override(cfg, {f"data.{name}": value for name, value in changes.items()}, checkpoint_path) \
        if changes else cfg


def load_model_for_inference(cfg: Config, dist: DistEnv):
    """(model, tokenizer, the configuration to evaluate with) described by ``cfg.run.resume``."""
    if not cfg.run.resume or cfg.run.resume == UNTRAINED:
        tokenizer = build_tokenizer_for(cfg.data, cfg.model, cfg.run.output_dir,
                                        lambda: build_train_dataset(cfg.data).training_texts(), dist.is_main)
        logger.info("evaluating the UNTRAINED model (seed %d)", cfg.seed)
        return build_model(cfg.model, tokenizer, cfg.seed), tokenizer, cfg

    checkpoint = load_checkpoint(cfg.run.resume)
    if is_release_checkpoint(checkpoint):
        # The release tokenises with the Chinese BERT vocabulary, shipped in the package.
        tokenizer = build_tokenizer(cfg.data.tokenizer or CHINESE_BERT_VOCAB_DIR, None, None)
        architecture = release_towers(checkpoint, cfg.run.release_config)
    else:
        # "config" since the configuration redesign; older checkpoints kept the flat "args".
        trained = checkpoint.get("config", {}).get("data") or checkpoint.get("args", {})
        cfg = with_trained_inputs(cfg, trained, cfg.run.resume)
        files = checkpoint.get("tokenizer_files")
        if files:
            tokenizer = restore_tokenizer(files, cfg.run.output_dir)
        else:
            tokenizer = build_tokenizer(cfg.data.tokenizer or cfg.model.pretrained, None, None)
        architecture = checkpoint.get("model_cfg") or cfg.model.architecture()
    model = build_model(with_embedding_inputs(architecture, cfg.model), tokenizer, cfg.seed)
    load_weights(model, checkpoint, cfg.run.resume)
    logger.info("loaded %s", cfg.run.resume)
    return model, tokenizer, cfg


def extraction_amp_dtype(cfg: Config) -> torch.dtype | None:
    """Autocast dtype of feature extraction on CUDA: fp16 under compat (the original's scripts pass
    --mixed_precision_training), the configured AMP dtype with --mixed_precision_training, else none."""
    if cfg.data.compat == "original":
        return torch.float16
    if cfg.optim.mixed_precision_training:
        return torch.float16 if cfg.optim.amp_dtype == "fp16" else torch.bfloat16
    return None


def write_features(cfg: Config) -> int:
    if not cfg.data.test_file:
        raise ValueError("--evaluate needs --test_file (the items to embed)")
    dist = init_distributed(cfg.run.dist_timeout)
    setup_logging(cfg.run.output_dir, dist.rank)
    log_configuration_notes(cfg)
    try:
        model, tokenizer, cfg = load_model_for_inference(cfg, dist)
        data = cfg.data
        if dist.is_main:
            write_config(cfg, cfg.run.output_dir)
        model.to(dist.device)
        if dist.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in fp32
        dataset = build_eval_data(data, data.test_file)
        decoder = DeviceJpegDecoder(data.image_size, train=False, device=dist.device) if data.gpu_decode else None
        # A rerun continues only an extraction of the same checkpoint with the same input settings.
        resume_key = {"checkpoint": cfg.run.resume, "data": cfg.to_dict()["data"]}
        count = extract_features(model, dataset, build_collator(data, tokenizer), dist, cfg.run.output_dir,
                                 data.batch_size, data.workers, cfg.run.feature_dtype, extraction_amp_dtype(cfg),
                                 decoder, partition_size=cfg.run.feature_partition_size, resume_key=resume_key)
        if dist.is_main and cfg.run.legacy_text_features:
            features = load_features(cfg.run.output_dir)
            write_legacy_features(os.path.join(cfg.run.output_dir, "features.feat"), features.ids, features.feats)
        if dist.is_main:
            logger.info("wrote %d features of %s to %s", count, data.test_file, cfg.run.output_dir)
        return count
    finally:
        cleanup_distributed()
