"""The one place that builds things from a resolved configuration: the tokenizer, the model, the
objective, the training and evaluation data, and weights loaded from any supported checkpoint.

Each builder takes only the section(s) it needs. A checkpoint of ours carries its resolved
configuration, model architecture and tokenizer files, so a single ``.pth.tar`` is enough to
evaluate: nothing has to be looked up next to it or downloaded.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch.utils.data import DataLoader

from real20m.config import Config, DataConfig, LossConfig, ModelConfig
from real20m.datasets import ClusterBatchSampler, Collator, SourceBatchSampler, build_eval_dataset, \
    build_tokenizer, build_train_dataset, load_saved_tokenizer
from real20m.engine.checkpoint import load_checkpoint
from real20m.engine.distributed import DistEnv, barrier
from real20m.losses import QCDLoss
from real20m.models import QCDModel, build_model as build_qcd_model
from real20m.models.convert import CONVERTED_WEIGHTS, load_weights_into
from real20m.models.release_layout import WeightMismatchError, is_release_checkpoint, release_architecture
from real20m.models.towers import describe_pretrained_source
from real20m.utils.seeding import seed_everything
from real20m.utils.workers import worker_init_for

logger = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"


# ------------------------------------------------------------------------------ tokenizer


def tokenizer_files(tokenizer_dir: str) -> dict[str, str]:
    """The saved tokenizer as {file name: text}, small enough to travel inside a checkpoint."""
    files = {}
    for name in sorted(os.listdir(tokenizer_dir)):
        path = os.path.join(tokenizer_dir, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                files[name] = handle.read()
    return files


def restore_tokenizer(files: dict[str, str], output_dir: str):
    """Write a checkpoint's tokenizer files under ``output_dir`` and load them.

    Every rank may do this at once: each file is written to a private name and renamed into
    place, so no rank ever reads a half-written file."""
    target = os.path.join(output_dir, TOKENIZER_DIR)
    os.makedirs(target, exist_ok=True)
    for name, text in files.items():
        if os.path.basename(name) != name:
            raise ValueError(f"checkpoint tokenizer file name {name!r} is not a plain file name")
        path = os.path.join(target, name)
        private = f"{path}.{os.getpid()}.tmp"
        with open(private, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(private, path)
    return load_saved_tokenizer(target)


def pretrained_tokenizer_name(data: DataConfig, model: ModelConfig) -> str | None:
    """The tokenizer to load by name (``--tokenizer``, else the backbone's), None for a trained one.

    A timm backbone is a vision model only (its text tower starts from scratch): no tokenizer."""
    return data.tokenizer or (model.pretrained if model.backbone != "timm" else None)


def build_tokenizer_for(data: DataConfig, model: ModelConfig, output_dir: str,
                        texts: Callable[[], Iterable[str]], is_main: bool, required: str | None = None):
    """The named tokenizer, or a WordPiece vocabulary trained on ``texts()`` by rank 0.

    ``required`` is a vocabulary the starting weights were trained with (a release checkpoint's
    Chinese BERT one); ``--tokenizer`` still wins. Every rank must use byte-identical vocabularies,
    so rank 0 trains and saves it and the others load the saved copy after a barrier. The
    vocabulary goes to OUTPUT_DIR/tokenizer either way, so that checkpoints can carry it."""
    target = os.path.join(output_dir, TOKENIZER_DIR)
    name = data.tokenizer or required or pretrained_tokenizer_name(data, model)
    if is_main:
        if name:
            # Said (or, offline and uncached, refused in one line) before transformers tries the hub.
            option = "data.tokenizer" if data.tokenizer else "the starting weights" if required else "model.pretrained"
            logger.info("loading the tokenizer from %s", describe_pretrained_source(name, option))
            build_tokenizer(name, None, target)
        else:
            build_tokenizer(None, texts(), target, vocab_size=data.vocab_size)
            logger.info("trained a WordPiece vocabulary of %d tokens, saved in %s", data.vocab_size, target)
    barrier()
    return load_saved_tokenizer(target)


def build_collator(data: DataConfig, tokenizer) -> Collator:
    return Collator(tokenizer, data.max_query_len, data.max_title_len)


# ------------------------------------------------------------------------------ model


def build_model(model: ModelConfig | dict, tokenizer, seed: int, train_vision: bool = True) -> QCDModel:
    """The QCD model, built with a fixed seed so every rank (and a CKPT=init baseline) starts
    identical. ``model`` is a config section or an architecture dict read from a checkpoint."""
    architecture = model.architecture() if isinstance(model, ModelConfig) else dict(model)
    seed_everything(seed)
    qcd = build_qcd_model(architecture, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    if not train_vision:
        qcd.freeze_vision()
    return qcd


def with_embedding_inputs(architecture: dict, model: ModelConfig) -> dict:
    """A stored architecture with how inputs are embedded (title/query masks, fp16 frame
    transformer) taken from this run's model section, which follows its compat mode."""
    return {**architecture, "use_title_mask": model.use_title_mask, "use_query_mask": model.use_query_mask,
            "frame_fp16": model.frame_fp16}


def read_weights(source: str) -> dict:
    """The checkpoint dict at ``source``: a checkpoint of ours, one in the release layout, or an
    exported folder / ``.safetensors`` file (``python -m real20m.models.convert``)."""
    path = Path(source)
    if path.is_dir():
        path = path / CONVERTED_WEIGHTS
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        if not path.is_file():
            raise FileNotFoundError(2, "exported weights not found", str(path))
        return {"model": load_file(str(path))}
    return load_checkpoint(path)


def load_weights(model: QCDModel, source: str | dict, origin: str | None = None) -> str:
    """Load weights (a checkpoint dict read from ``origin``, or a path ``read_weights`` reads)
    strictly; returns the summary. A mismatch names the file."""
    checkpoint = source if isinstance(source, dict) else read_weights(source)
    origin = origin or (None if isinstance(source, dict) else source)
    try:
        return load_weights_into(model, checkpoint)
    except WeightMismatchError as error:
        raise WeightMismatchError(f"{origin}: {error}" if origin else str(error)) from None


def read_release_config(path: str | None) -> dict | None:
    """The cn_clip-style config.json given with ``--release_config``, None without one."""
    if path is None:
        return None
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise WeightMismatchError(f"{path}: line {error.lineno}: not a JSON release config ({error.msg})") from None


def release_towers(checkpoint: dict, release_config: str | None) -> dict:
    """The model_cfg of a release checkpoint's towers, with one line saying where it came from."""
    towers, how = release_architecture(checkpoint, read_release_config(release_config), release_config)
    logger.info("release checkpoint: architecture from %s", how)
    return towers


# What a release checkpoint decides when training starts from it; the rest (caption decoder,
# fusion, frame aggregation, pooling) is the run's own configuration.
RELEASE_TOWER_FIELDS = ("backbone", "pretrained", "text", "vision", "timm_name", "embed_dim", "frame_heads")


def training_architecture(cfg: Config, start: dict | None, source: str | None) -> ModelConfig | dict:
    """The model a run builds: ``cfg.model``, or, starting from a release checkpoint, its towers
    with the run's other model options. A run resuming one of our checkpoints keeps the stored
    architecture (so a run started from a hub backbone resumes offline), embedding inputs as
    this run's compat says."""
    if start is None:
        return cfg.model
    if is_release_checkpoint(start):
        towers = release_towers(start, cfg.run.release_config)
        size = towers["vision"]["image_size"]
        if size != cfg.data.image_size:
            raise WeightMismatchError(f"{source}: the release checkpoint's vision tower takes {size}-pixel "
                                      f"images, and this run's --image_size is {cfg.data.image_size}: "
                                      f"set --image_size {size}")
        return {**cfg.model.architecture(), **{name: towers[name] for name in RELEASE_TOWER_FIELDS},
                "timm_args": {}, "image_size": size}
    if source == cfg.run.resume and "model" in start and start.get("model_cfg"):
        return with_embedding_inputs(start["model_cfg"], cfg.model)
    return cfg.model


# ------------------------------------------------------------------------------ objective


def build_objective(loss: LossConfig, embed_dim: int) -> QCDLoss:
    return QCDLoss(weights=dict(loss.weights), logit_scale=loss.logit_scale, learnable_scale=loss.learnable_scale,
                   xbm_size=loss.xbm_size if loss.is_xbm else 0, embed_dim=embed_dim,
                   local_negatives=loss.local_negatives, xbm_mode=loss.xbm_mode, log_terms=tuple(loss.log_terms),
                   normalize_query=loss.normalize_query)


# ------------------------------------------------------------------------------ data


def build_train_sampler(data: DataConfig, dataset, dist: DistEnv, seed: int) -> SourceBatchSampler:
    """Source-homogeneous batches; within one query cluster too with ``hard_sample``."""
    if data.hard_sample:
        return ClusterBatchSampler(dataset, data.batch_size, dist.rank, dist.world_size, seed,
                                   cluster_file=data.cluster_file)
    return SourceBatchSampler(dataset, data.batch_size, dist.rank, dist.world_size, seed)


def build_train_loader(data: DataConfig, dataset, sampler, collate, dist: DistEnv, seed: int) -> DataLoader:
    """One loader for the whole run. Its workers persist across epochs (starting them costs more
    than a tiny epoch); they hold no randomness of their own, because every sample is drawn from
    the seed its sampler key carries, so persistence does not affect what a resumed run sees."""
    generator = torch.Generator().manual_seed(seed * 100_003 + dist.rank)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=data.workers,
                      pin_memory=dist.device.type == "cuda", generator=generator,
                      persistent_workers=data.workers > 0, worker_init_fn=worker_init_for(dist.device))


def build_train_data(data: DataConfig, collate, dist: DistEnv, seed: int, dataset=None):
    """(dataset, sampler, loader) of the training file."""
    dataset = dataset if dataset is not None else build_train_dataset(data)
    sampler = build_train_sampler(data, dataset, dist, seed)
    if len(sampler) == 0:
        raise ValueError(f"{data.train_file}: too few samples for one batch of {data.batch_size} "
                         f"per source on each of {dist.world_size} process(es)")
    return dataset, sampler, build_train_loader(data, dataset, sampler, collate, dist, seed)


def build_eval_data(data: DataConfig, test_file: str):
    """The evaluation dataset of an item file (deterministic frames and text)."""
    return build_eval_dataset(data, test_file)
