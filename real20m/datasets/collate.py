"""Collate samples into the batch dict the model and the training loop read."""
from __future__ import annotations

import torch

from .categories import CATEGORY_KEY


class Collator:
    """callable(list of sample dicts) -> batch dict.

    Texts are tokenised with padding to the longest in the batch and truncated at
    ``max_query_len`` / ``max_title_len``. In a batch mixing clip lengths (evaluation of a mixed
    file) one-frame items (goods) are repeated to T frames, which the model treats identically."""

    def __init__(self, tokenizer, max_query_len: int = 32, max_title_len: int = 32):
        self.tokenizer = tokenizer
        self.max_query_len = max_query_len
        self.max_title_len = max_title_len

    def __call__(self, samples: list[dict]) -> dict:
        if not samples:
            raise ValueError("cannot collate an empty batch")
        titles = [sample["title"] for sample in samples]
        sources = [sample["source"] for sample in samples]
        batch = {
            "pids": torch.tensor([sample["pid"] for sample in samples], dtype=torch.long),
            "source": sources[0] if len(set(sources)) == 1 else sources,
            "issues": [issue for sample in samples for issue in sample["issues"]],
        }
        if "jpeg" in samples[0]:
            # GPU decoding: the main process turns the bytes into pixels on its device.
            batch["jpeg"] = [sample["jpeg"] for sample in samples]
            batch["plans"] = [sample["plans"] for sample in samples]
        else:
            batch["pixels"] = stack_frames([sample["frames"] for sample in samples])
        batch["title_ids"], batch["title_mask"] = self._tokenize(titles, self.max_title_len)
        if all("query" in sample for sample in samples):
            queries = [sample["query"] for sample in samples]
            batch["query_ids"], batch["query_mask"] = self._tokenize(queries, self.max_query_len)
        if all(CATEGORY_KEY in sample for sample in samples):
            # Goods-category classes (categories.py), present when a weighted loss term reads them.
            batch[CATEGORY_KEY] = torch.tensor([sample[CATEGORY_KEY] for sample in samples], dtype=torch.long)
        if all("pair" in sample for sample in samples):
            # Item pairs (no query guidance): each goods item's video of the same query.
            batch["pair"] = self([sample["pair"] for sample in samples])
            batch["issues"] += batch["pair"]["issues"]
        return batch

    def _tokenize(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.tokenizer(texts, padding="longest", truncation=True, max_length=max_length,
                                 return_tensors="pt")
        return encoded["input_ids"].long(), encoded["attention_mask"].long()


def stack_frames(clips: list[torch.Tensor]) -> torch.Tensor:
    """(B, T, 3, H, W) from (T_i, 3, H, W) clips; T = max T_i, single frames repeated to T."""
    length = max(clip.shape[0] for clip in clips)
    for clip in clips:
        if clip.shape[0] not in (1, length):
            raise ValueError(f"cannot batch clips of {clip.shape[0]} and {length} frames")
    return torch.stack([clip.expand(length, *clip.shape[1:]) for clip in clips])


def decode_batch_pixels(batch: dict, decoder) -> dict:
    """A batch of JPEG bytes (``gpu_decode``) with its pixels decoded by ``decoder``
    (``transforms.DeviceJpegDecoder``), item pairs included; other batches pass unchanged."""
    if "jpeg" in batch:
        batch = {**batch, "pixels": decoder(batch["jpeg"], batch["plans"])}
        del batch["jpeg"], batch["plans"]
    if "pair" in batch:
        batch = {**batch, "pair": decode_batch_pixels(batch["pair"], decoder)}
    return batch
