"""Title/visual attention pooling: a learned, per-item softmax weighting of the two modalities."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AttentionPooling(nn.Module):
    """[normalize(title), normalize(visual)] -> softmax(Linear(2D -> 2)) weighted sum, L2-normalised.

    The order (title first) matters: the released projection weights were trained with it.
    """

    def __init__(self, embed_dim: int, num_inputs: int = 2):
        super().__init__()
        self.projection = nn.Linear(num_inputs * embed_dim, num_inputs)

    def forward(self, title: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (fused (B, D), weights (B, 2) in the order title, visual)."""
        stacked = torch.stack([F.normalize(title, dim=-1), F.normalize(visual, dim=-1)], dim=1)
        weights = self.projection(stacked.flatten(1)).softmax(dim=1)
        fused = (weights.unsqueeze(-1) * stacked).sum(dim=1)
        return F.normalize(fused, dim=-1), weights


class SingleModality(nn.Module):
    """The fused embedding is one modality alone (the ablations without title/visual fusion)."""

    def __init__(self, embed_dim: int, keep: str):
        super().__init__()
        self.keep = keep

    def forward(self, title: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = title if self.keep == "title" else visual
        weights = torch.zeros(chosen.shape[0], 2, device=chosen.device, dtype=chosen.dtype)
        weights[:, 0 if self.keep == "title" else 1] = 1
        return F.normalize(chosen, dim=-1), weights


def title_only(embed_dim: int) -> SingleModality:
    return SingleModality(embed_dim, "title")


def visual_only(embed_dim: int) -> SingleModality:
    return SingleModality(embed_dim, "visual")
