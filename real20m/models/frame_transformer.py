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


class FrameTransformer(nn.Module):
    """(B, T, D) frame embeddings -> (B, D) L2-normalised clip embedding.

    T must be clip_length, or 1 for a single image (a goods item). A single image broadcasts
    over the clip_length positional slots, which equals feeding the image clip_length times,
    exactly as the original model behaves.
    """

    def __init__(self, width: int, clip_length: int, heads: int, layers: int = 1, init: str = "default"):
        super().__init__()
        if init not in FRAME_INITS:
            raise ValueError(f"frame transformer init must be one of {FRAME_INITS}, got {init!r}")
        self.clip_length = clip_length
        self.positional_embedding = nn.Parameter(torch.empty(1, clip_length, width))
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))
        if init == "original":
            self._original_init()
        self.gradient_checkpointing = False

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 3 or frames.shape[1] not in (1, self.clip_length):
            raise ValueError(
                f"frame embeddings must be (B, T, D) with T in (1, {self.clip_length}); got {tuple(frames.shape)}"
            )
        if frames.shape[1] == 1:
            frames = frames.expand(-1, self.clip_length, -1)
        x = frames + self.positional_embedding
        for block in self.resblocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = x + frames  # outer residual back to the raw frame embeddings
        return F.normalize(x.mean(dim=1), dim=-1)

    def _original_init(self) -> None:
        """The release's initialisation: truncated normal (std 0.02) for the positional embedding
        and every Linear (bias 0), LayerNorm weight 1 / bias 0; the attention's packed input
        projection keeps PyTorch's default, as it does there."""
        nn.init.trunc_normal_(self.positional_embedding, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


class MeanFrames(nn.Module):
    """(B, T, D) -> (B, D): the L2-normalised mean of the frame embeddings (the ablation without
    temporal modelling). T = 1 (goods) gives the image's own embedding."""

    def __init__(self, width: int, clip_length: int, heads: int, layers: int = 1, init: str = "default"):
        super().__init__()
        self.clip_length = clip_length
        self.gradient_checkpointing = False

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 3 or frames.shape[1] not in (1, self.clip_length):
            raise ValueError(
                f"frame embeddings must be (B, T, D) with T in (1, {self.clip_length}); got {tuple(frames.shape)}")
        return F.normalize(frames.mean(dim=1), dim=-1)


# model.frame_aggregation -> module (width, clip_length, heads, init=...) turning frames into one embedding.
FRAME_AGGREGATIONS = {"transformer": FrameTransformer, "mean": MeanFrames}
