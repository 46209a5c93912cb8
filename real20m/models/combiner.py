"""CLIP4Cir's Combiner (Baldrati et al., "Effective conditioned and composed image retrieval
combining CLIP-based features", CVPR 2022) as a title/visual fusion (``model.fusion combiner``).

Both inputs are projected (Linear + ReLU) and concatenated; from the concatenation one MLP gives
a per-item gate g in (0, 1) (Linear, ReLU, Linear to one value, sigmoid) and another a mixed
feature (Linear, ReLU, Linear back to D). The output is
``normalize(mix + g * title + (1 - g) * visual)``: a learned convex combination of the two
inputs plus the learned mixture as a residual. The paper's projections are wider than its
features and it uses dropout; here both widths are D (the tiny config trains on a CPU) and there
is no dropout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Combiner(nn.Module):
    def __init__(self, embed_dim: int):
        super().__init__()
        self.title_projection = nn.Linear(embed_dim, embed_dim)
        self.visual_projection = nn.Linear(embed_dim, embed_dim)
        self.gate = nn.Sequential(nn.Linear(2 * embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))
        self.mix = nn.Sequential(nn.Linear(2 * embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, title: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (fused (B, D) L2-normalised, weights (B, 2): the gate's (g, 1 - g) for title, visual)."""
        title, visual = F.normalize(title, dim=-1), F.normalize(visual, dim=-1)
        projected = torch.cat([F.relu(self.title_projection(title)), F.relu(self.visual_projection(visual))], dim=-1)
        gate = torch.sigmoid(self.gate(projected))
        fused = self.mix(projected) + gate * title + (1 - gate) * visual
        return F.normalize(fused, dim=-1), torch.cat([gate, 1 - gate], dim=-1)
