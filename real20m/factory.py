"""The one place that builds things from a resolved configuration: the tokenizer, the model, the
objective, the training and evaluation data. Weights come from ``real20m.model_source``.

Each builder takes only the section(s) it needs. A checkpoint of ours carries its resolved
configuration, model architecture and tokenizer files, so a single ``.pth.tar`` is enough to
evaluate: nothing has to be looked up next to it or downloaded.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Iterable

import torch
from torch.utils.data import DataLoader

from real20m.config import DataConfig, LossConfig, ModelConfig
from real20m.datasets import ClusterBatchSampler, Collator, SourceBatchSampler, build_eval_dataset, \
    build_tokenizer, build_train_dataset, load_saved_tokenizer
from real20m.losses import QCDLoss
from real20m.losses.memory_bank import MemorySpec
from real20m.losses.terms import TermSetting
from real20m.models import QCDModel, build_model as build_qcd_model
from real20m.models.backbones import get_backbone
from real20m.models.towers import describe_pretrained_source
from real20m.utils.atomic import atomic_open
from real20m.utils.distributed import DistEnv, barrier
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
        with atomic_open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    return load_saved_tokenizer(target)


def pretrained_tokenizer_name(data: DataConfig, model: ModelConfig) -> str | None:
    """The tokenizer to load by name (``--tokenizer``, else the one the backbone's weights come
    with), None for a trained one (a vision-only backbone's text tower starts from scratch)."""
    return data.tokenizer or get_backbone(model.backbone).tokenizer_name(model.pretrained)


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


# ------------------------------------------------------------------------------ objective


def build_objective(loss: LossConfig, setting: TermSetting) -> QCDLoss:
    memory = MemorySpec(loss.xbm_size, setting.dim, loss.xbm_mode) if loss.is_xbm and loss.xbm_size > 0 else None
    return QCDLoss(weights=dict(loss.weights), logit_scale=loss.logit_scale, learnable_scale=loss.learnable_scale,
                   memory=memory, local_negatives=loss.local_negatives, log_terms=tuple(loss.log_terms),
                   normalize_query=loss.normalize_query, setting=setting)


# ------------------------------------------------------------------------------ data


def build_train_sampler(data: DataConfig, dataset, dist: DistEnv, seed: int) -> SourceBatchSampler:
    """Source-homogeneous batches of one optimizer step each (``data.step_batch_size``: with
    gradient accumulation, the trainer cuts them into micro-batches); within one query cluster too
    with ``hard_sample``."""
    if data.hard_sample:
        return ClusterBatchSampler(dataset, data.step_batch_size, dist.rank, dist.world_size, seed,
                                   cluster_file=data.cluster_file)
    return SourceBatchSampler(dataset, data.step_batch_size, dist.rank, dist.world_size, seed)


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
        raise ValueError(f"{data.train_file}: too few samples for one batch of {data.step_batch_size} "
                         f"per source on each of {dist.world_size} process(es)")
    return dataset, sampler, build_train_loader(data, dataset, sampler, collate, dist, seed)


def build_eval_data(data: DataConfig, test_file: str):
    """The evaluation dataset of an item file (deterministic frames and text)."""
    return build_eval_dataset(data, test_file)
