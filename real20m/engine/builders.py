"""What training and feature extraction both need: the tokenizer and the model, built the same way.

A checkpoint of ours carries its tokenizer files and its model configuration, so that a single
``.pth.tar`` is enough to evaluate: nothing has to be looked up next to it or downloaded.
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Iterable

from real20m.datasets import build_tokenizer, load_saved_tokenizer
from real20m.engine.distributed import barrier
from real20m.models import build_model
from real20m.utils.seeding import seed_everything

logger = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"


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


def prepare_tokenizer(cfg: argparse.Namespace, texts: Iterable[str] | None, is_main: bool):
    """The backbone's tokenizer, or a WordPiece vocabulary trained on ``texts`` by rank 0.

    Every rank must use byte-identical vocabularies, so rank 0 trains and saves it and the others
    load the saved copy after a barrier.
    """
    pretrained = cfg.tokenizer or cfg.model.get("pretrained")
    target = os.path.join(cfg.output_dir, TOKENIZER_DIR)
    if pretrained:
        return build_tokenizer(pretrained, None, None)
    if is_main:
        if texts is None:
            raise ValueError("a from-scratch configuration needs the training text to build its vocabulary")
        build_tokenizer(None, texts, target, vocab_size=cfg.vocab_size)
        logger.info("trained a WordPiece vocabulary of %d tokens, saved in %s", cfg.vocab_size, target)
    barrier()
    return load_saved_tokenizer(target)


def make_model(model_cfg: dict[str, Any], tokenizer, seed: int, compat: str):
    """Build the model with a fixed seed, so every rank (and a CKPT=init baseline) starts identical."""
    seed_everything(seed)
    model = build_model(model_cfg, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    model.use_title_mask = compat != "original"
    return model
