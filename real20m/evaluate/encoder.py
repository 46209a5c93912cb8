"""Texts and items to L2-normalised float32 features: the one inference path of ``--evaluate``,
validation and ``Retriever``, so the three give the same vector for the same input.

The autocast policy and the device JPEG decoder are decided once, when the encoder is built from
the resolved configuration.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from real20m.config import Config
from real20m.datasets import DeviceJpegDecoder
from real20m.errors import InputError


class EmbeddingInputError(InputError, ValueError):
    """An item the model cannot embed (e.g. a title longer than the text tower's positions)."""


def autocast_dtype(cfg: Config) -> torch.dtype | None:
    """Autocast dtype on CUDA: fp16 under compat (the original's scripts pass
    --mixed_precision_training), the configured AMP dtype with --mixed_precision_training, else none."""
    if cfg.data.compat == "original":
        return torch.float16
    if cfg.optim.mixed_precision_training:
        return torch.float16 if cfg.optim.amp_dtype == "fp16" else torch.bfloat16
    return None


def check_title_lengths(batch: dict, max_positions: int) -> None:
    """Refuse, naming the first such pid, titles with more tokens than the text tower has positions
    (its position lookup would fail with an IndexError deep inside the model)."""
    lengths = batch["title_mask"].sum(dim=1)
    too_long = torch.nonzero(lengths > max_positions).flatten()
    if len(too_long):
        first = int(too_long[0])
        raise EmbeddingInputError(
            f"pid {int(batch['pids'][first])}: its title has {int(lengths[first])} tokens but the text tower has "
            f"{max_positions} positions; lower --max_title_len or use a model with more text positions")


class Encoder:
    """A model in eval mode on one device, with the autocast dtype and frame decoder it runs under."""

    def __init__(self, model, device: torch.device, amp_dtype: torch.dtype | None = None, decoder=None):
        self.model = model.eval()
        self.device = device
        self.amp_dtype = amp_dtype
        self.decoder = decoder

    @classmethod
    def for_config(cls, model, cfg: Config, device: torch.device) -> "Encoder":
        decoder = DeviceJpegDecoder(cfg.data.image_size, train=False, device=device) if cfg.data.gpu_decode else None
        return cls(model, device, autocast_dtype(cfg), decoder)

    def _autocast(self):
        if self.amp_dtype is None or self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    @torch.no_grad()
    def item_batches(self, loader: Iterable[dict]) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
        """(pids int64, features float32, issue kinds) of each collated batch of items, in order."""
        for batch in loader:
            check_title_lengths(batch, self.model.max_text_tokens)
            pixels = self.decoder(batch["jpeg"], batch["plans"]) if self.decoder is not None else \
                batch["pixels"].to(self.device, non_blocking=True)
            with self._autocast():
                fused = self.model.encode_items(batch["title_ids"].to(self.device, non_blocking=True),
                                                batch["title_mask"].to(self.device, non_blocking=True), pixels).fused
            yield (batch["pids"].cpu().numpy().astype(np.int64), F.normalize(fused.float(), dim=-1).cpu().numpy(),
                   [kind for kind, _ in batch.get("issues", ())])

    @torch.no_grad()
    def queries(self, encoded: dict) -> np.ndarray:
        """Features of one tokenised batch of query texts (``input_ids``, ``attention_mask``)."""
        with self._autocast():
            query = self.model.encode_query(encoded["input_ids"].long().to(self.device),
                                            encoded["attention_mask"].long().to(self.device))
        return F.normalize(query.float(), dim=-1).cpu().numpy()
