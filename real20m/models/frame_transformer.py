"""Temporal fusion of per-frame embeddings into one visual embedding per item.

Parameter names (positional_embedding, resblocks.N.{attn,ln_1,mlp.c_fc,mlp.c_proj,ln_2}) follow
the CLIP residual block so the released fusion weights map one to one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the GELU approximation CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class FrameMLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = QuickGELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        # in_proj_weight rows are (q, k, v), the layout of the released checkpoints.
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width, eps=1e-5)
        self.mlp = FrameMLP(width, 4 * width)
        self.ln_2 = nn.LayerNorm(width, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


FRAME_INITS = ("default", "original")


def check_frame_init(init: str) -> None:
    if init not in FRAME_INITS:
        raise ValueError(f"frame transformer init must be one of {FRAME_INITS}, got {init!r}")


def check_frame_shape(frames: torch.Tensor, clip_length: int) -> None:
    if frames.dim() != 3 or frames.shape[1] not in (1, clip_length):
        raise ValueError(
            f"frame embeddings must be (B, T, D) with T in (1, {clip_length}); got {tuple(frames.shape)}"
        )


def clip_frames(frames: torch.Tensor, clip_length: int) -> torch.Tensor:
    """(B, T, D) frame embeddings with T = clip_length, or T = 1 (a single image) broadcast over
    the clip_length slots, which equals feeding the image clip_length times."""
    check_frame_shape(frames, clip_length)
    return frames.expand(-1, clip_length, -1) if frames.shape[1] == 1 else frames


def run_block(block: nn.Module, x: torch.Tensor, recompute: bool) -> torch.Tensor:
    """``block(x)``; with ``recompute`` (gradient checkpointing while training) its activations are
    recomputed in the backward pass instead of stored."""
    if recompute and torch.is_grad_enabled():
        return checkpoint(block, x, use_reentrant=False)
    return block(x)


def truncated_normal_init(module: nn.Module, positional_embedding: nn.Parameter) -> None:
    """The release's initialisation: truncated normal (std 0.02) for the positional embedding
    and every Linear (bias 0), LayerNorm weight 1 / bias 0; the attention's packed input
    projection keeps PyTorch's default, as it does there."""
    nn.init.trunc_normal_(positional_embedding, std=0.02)
    for part in module.modules():
        if isinstance(part, nn.Linear):
            nn.init.trunc_normal_(part.weight, std=0.02)
            if part.bias is not None:
                nn.init.zeros_(part.bias)
        elif isinstance(part, nn.LayerNorm):
            nn.init.ones_(part.weight)
            nn.init.zeros_(part.bias)


class FrameTransformer(nn.Module):
    """(B, T, D) frame embeddings -> (B, D) L2-normalised clip embedding.

    T must be clip_length, or 1 for a single image (a goods item). A single image broadcasts
    over the clip_length positional slots, which equals feeding the image clip_length times,
    exactly as the original model behaves.
    """

    def __init__(self, width: int, clip_length: int, heads: int, layers: int = 1, init: str = "default"):
        super().__init__()
        check_frame_init(init)
        self.clip_length = clip_length
        self.positional_embedding = nn.Parameter(torch.empty(1, clip_length, width))
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))
        if init == "original":
            truncated_normal_init(self, self.positional_embedding)
        self.gradient_checkpointing = False

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        frames = clip_frames(frames, self.clip_length)
        x = frames + self.positional_embedding
        for block in self.resblocks:
            x = run_block(block, x, self.gradient_checkpointing and self.training)
        x = x + frames  # outer residual back to the raw frame embeddings
        return F.normalize(x.mean(dim=1), dim=-1)


class MeanFrames(nn.Module):
    """(B, T, D) -> (B, D): the L2-normalised mean of the frame embeddings (the ablation without
    temporal modelling). T = 1 (goods) gives the image's own embedding."""

    def __init__(self, width: int, clip_length: int, heads: int, layers: int = 1, init: str = "default"):
        super().__init__()
        self.clip_length = clip_length
        self.gradient_checkpointing = False

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        check_frame_shape(frames, self.clip_length)
        return F.normalize(frames.mean(dim=1), dim=-1)
