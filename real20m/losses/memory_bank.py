"""Cross-batch memory (XBM, Wang et al. 2020): past embeddings reused as extra negatives.

The ring lives in registered buffers (embeddings, write pointer, filled count), so it is saved in
the loss module's state_dict and a resumed run continues with exactly the same negatives.
"""
import torch
from torch import Tensor, nn


class CrossBatchMemory(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        if size <= 0 or dim <= 0:
            raise ValueError(f"CrossBatchMemory needs size > 0 and dim > 0, got size={size} dim={dim}")
        self.size = size
        self.register_buffer("queries", torch.zeros(size, dim))
        self.register_buffer("items", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, queries: Tensor, items: Tensor) -> None:
        """Write row-paired embeddings (oldest entries are overwritten first)."""
        if queries.shape != items.shape or queries.shape[1:] != self.queries.shape[1:]:
            raise ValueError(
                f"enqueue expects two (N, {self.queries.shape[1]}) tensors, "
                f"got {tuple(queries.shape)} and {tuple(items.shape)}"
            )
        # More rows than the ring holds: only the newest `size` rows would survive anyway.
        queries, items = queries[-self.size :], items[-self.size :]
        count = queries.shape[0]
        slots = (self.ptr + torch.arange(count, device=self.ptr.device)) % self.size
        self.queries[slots] = queries.detach().to(self.queries.dtype)
        self.items[slots] = items.detach().to(self.items.dtype)
        self.ptr.copy_((self.ptr + count) % self.size)
        self.filled.copy_(torch.clamp(self.filled + count, max=self.size))

    def negatives(self) -> tuple[Tensor, Tensor]:
        """(queries, items) of the filled part of the ring, each (filled, dim)."""
        filled = int(self.filled.item())
        return self.queries[:filled], self.items[:filled]

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.queries.shape[1]}"
