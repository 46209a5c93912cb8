"""X-CLIP's temporal modelling (Ni et al., "Expanding Language-Image Pretrained Models for General
Video Recognition", ECCV 2022) as a frame aggregation (``model.frame_aggregation xclip``).

X-CLIP runs it inside the image encoder, on each frame's patch tokens; here the vision tower
gives one embedding per frame, which takes the place of the frame's class token:

* cross-frame communication: each frame emits a message token (a linear map of the frame token);
  the messages of all frames exchange information in a self-attention over the T messages
  (cross-frame fusion); then each frame token attends to itself and its own message only
  (intra-frame diffusion), followed by an MLP. A frame learns about the others through the
  messages alone.
* multi-frame integration: frames + a learned temporal positional embedding, a transformer block
  over the T frames, its input added back (as the frame transformer does), mean over T.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .frame_transformer import (FrameMLP, ResidualAttentionBlock, check_frame_init, clip_frames, run_block,
                                truncated_normal_init)


class CrossFrameCommunication(nn.Module):
    """One layer of the cross-frame communication transformer on (B, T, D) frame tokens."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.message = nn.Linear(width, width)
        self.ln_message = nn.LayerNorm(width)
        self.message_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.diffusion_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = FrameMLP(width, 4 * width)

    def exchange_messages(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, D) frames -> (B, T, D) messages after the cross-frame fusion attention."""
        messages = self.message(frames)
        h = self.ln_message(messages)
        return messages + self.message_attn(h, h, h, need_weights=False)[0]

    def diffuse(self, frames: torch.Tensor, messages: torch.Tensor) -> torch.Tensor:
        """Each frame token attends to [itself, its own message] (no other frame), then the MLP."""
        batch, length, width = frames.shape
        tokens = self.ln_1(torch.stack([frames, messages], dim=2).flatten(0, 1))   # (B*T, 2, D)
        attended = self.diffusion_attn(tokens[:, :1], tokens, tokens, need_weights=False)[0]
        x = frames.reshape(batch * length, width) + attended.squeeze(1)
        x = x + self.mlp(self.ln_2(x))
        return x.view(batch, length, width)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.diffuse(frames, self.exchange_messages(frames))


class XClipAggregation(nn.Module):
    """(B, T, D) frame embeddings -> (B, D) L2-normalised clip embedding; T is clip_length, or 1
    for a goods image (broadcast over the clip_length slots, as the frame transformer does).
    ``layers`` of each of the two transformers; ``init`` original: truncated normal (std 0.02)
    for every Linear and the positional embedding, as X-CLIP initialises its new layers."""

    def __init__(self, width: int, clip_length: int, heads: int, layers: int = 1, init: str = "default"):
        super().__init__()
        check_frame_init(init)
        self.clip_length = clip_length
        self.communication = nn.ModuleList(CrossFrameCommunication(width, heads) for _ in range(layers))
        self.positional_embedding = nn.Parameter(torch.empty(1, clip_length, width))
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.integration = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))
        if init == "original":
            truncated_normal_init(self, self.positional_embedding)
        self.gradient_checkpointing = False

    def communicate(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, clip_length, D): the frame tokens after cross-frame communication."""
        x = clip_frames(frames, self.clip_length)
        for layer in self.communication:
            x = run_block(layer, x, self.gradient_checkpointing and self.training)
        return x

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        frames = self.communicate(frames)
        x = frames + self.positional_embedding
        for block in self.integration:
            x = run_block(block, x, self.gradient_checkpointing and self.training)
        return F.normalize((x + frames).mean(dim=1), dim=-1)
