"""Embed every item of an evaluation dataset and write one feature shard per rank.

Each rank embeds a contiguous, disjoint slice of the dataset, with no padding
(DistributedSampler would repeat items to even out the ranks, and a repeated
gallery item changes Recall@K). Rank 0 then checks that the shards together
hold every pid of the dataset exactly once.
"""

import collections
import contextlib
import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from real20m.engine.distributed import barrier
from real20m.evaluate.feature_io import FeatureFileError, load_shard_folder, write_feature_meta, write_feature_shard
from real20m.utils.workers import worker_init_for

logger = logging.getLogger(__name__)


class EmbeddingInputError(ValueError):
    """An item the model cannot embed (e.g. a title longer than the text tower's positions)."""


def check_title_lengths(batch, max_positions):
    """Refuse, naming the first such pid, titles with more tokens than the text tower has positions
    (its position lookup would fail with an IndexError deep inside the model)."""
    lengths = batch["title_mask"].sum(dim=1)
    too_long = torch.nonzero(lengths > max_positions).flatten()
    if len(too_long):
        first = int(too_long[0])
        raise EmbeddingInputError(
            f"pid {int(batch['pids'][first])}: its title has {int(lengths[first])} tokens but the text tower has "
            f"{max_positions} positions; lower --max_title_len or use a model with more text positions")


def rank_slice(num_items, rank, world_size):
    """The contiguous block of item indices this rank embeds (blocks differ in size by at most one)."""
    return range(num_items * rank // world_size, num_items * (rank + 1) // world_size)


@torch.no_grad()
def _embed(model, loader, device, amp_dtype, is_main, decoder):
    ids, feats, issues = [], [], collections.Counter()
    autocast = (torch.autocast("cuda", dtype=amp_dtype) if amp_dtype is not None and device.type == "cuda"
                else contextlib.nullcontext())
    for batch in tqdm(loader, desc="extract features", disable=not is_main):
        check_title_lengths(batch, model.max_text_tokens)
        pixels = decoder(batch["jpeg"], batch["plans"]) if decoder is not None else \
            batch["pixels"].to(device, non_blocking=True)
        with autocast:
            fused = model.encode_items(batch["title_ids"].to(device, non_blocking=True),
                                       batch["title_mask"].to(device, non_blocking=True), pixels).fused
        feats.append(F.normalize(fused.float(), dim=-1).cpu().numpy())
        ids.append(batch["pids"].cpu().numpy().astype(np.int64))
        issues.update(kind for kind, _ in batch.get("issues", ()))
    return ids, feats, issues


def verify_shards(out_dir, expected_pids):
    """Every expected pid exactly once across the shards (duplicates are caught while loading)."""
    features = load_shard_folder(out_dir)
    expected = np.sort(np.asarray(expected_pids, dtype=np.int64))
    written = np.sort(features.ids)
    if not np.array_equal(written, expected):
        missing = np.setdiff1d(expected, written)
        extra = np.setdiff1d(written, expected)
        raise FeatureFileError(
            f"{out_dir}: shards hold {len(written)} pids, dataset has {len(expected)}; "
            f"missing {len(missing)} (e.g. {missing[:5].tolist()}), unexpected {len(extra)} (e.g. {extra[:5].tolist()})")
    return len(written)


def extract_features(model, dataset, collate_fn, dist_env, out_dir, batch_size, workers, dtype="float32",
                     amp_dtype=None, decoder=None):
    """Write ``out_dir/{ids,feats}_rank<r>.npy`` + meta.json; returns the number of items embedded.

    The count is verified on rank 0 (every pid of ``dataset.pids`` exactly once); other ranks
    return the dataset size without waiting for that check.
    """
    model.eval()
    indices = rank_slice(len(dataset), dist_env.rank, dist_env.world_size)
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_fn, pin_memory=dist_env.device.type == "cuda",
                        worker_init_fn=worker_init_for(dist_env.device))
    ids, feats, issues = _embed(model, loader, dist_env.device, amp_dtype, dist_env.is_main, decoder)
    dim = feats[0].shape[1] if feats else 0
    write_feature_shard(out_dir, dist_env.rank,
                        np.concatenate(ids) if ids else np.empty(0, np.int64),
                        np.concatenate(feats) if feats else np.empty((0, dim), np.float32), dtype)
    if issues:
        logger.warning("rank %d: data issues while embedding: %s", dist_env.rank, dict(issues))
    barrier()
    if not dist_env.is_main:
        return len(dataset)
    write_feature_meta(out_dir, dist_env.world_size)
    return verify_shards(out_dir, dataset.pids)
