"""Cross-batch memory (XBM, Wang et al. 2020): past embeddings reused as extra negatives.

The ring lives in registered buffers (embeddings, write pointer, filled count), so it is saved in
the loss module's state_dict and a resumed run continues with exactly the same negatives.
"""
from dataclasses import dataclass

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


class OriginalCrossBatchMemory(nn.Module):
    """The original release's per-rank memory of ``slots`` (query, item) rows, zero-initialised.

    Each step first writes the current batch into rows 0..B-1; the rows that were there move to
    the write pointer, which then advances by B (when the next move would pass the end it restarts
    at B and the bank counts as full). The fused term then scores the batch against the filled rows,
    the positive of batch row i being bank row i."""

    def __init__(self, slots: int, dim: int):
        super().__init__()
        if slots <= 0 or dim <= 0:
            raise ValueError(f"OriginalCrossBatchMemory needs slots > 0 and dim > 0, got {slots}, {dim}")
        self.register_buffer("queries", torch.zeros(slots, dim))
        self.register_buffer("items", torch.zeros(slots, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("full", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def write(self, queries: Tensor, items: Tensor) -> None:
        batch, slots = queries.shape[0], self.queries.shape[0]
        if 2 * batch > slots:
            raise ValueError(f"a memory of {slots} rows cannot hold two batches of {batch}")
        ptr = int(self.ptr)
        if ptr + batch > slots:
            ptr = batch
            self.full.fill_(True)
        for bank, current in ((self.queries, queries), (self.items, items)):
            bank[ptr:ptr + batch] = bank[:batch].clone()
            bank[:batch] = current.detach().to(bank.dtype)
        self.ptr.fill_(ptr + batch)

    def negatives(self) -> tuple[Tensor, Tensor]:
        """(queries, items) of the filled rows (all of them once full)."""
        filled = self.queries.shape[0] if bool(self.full) else int(self.ptr)
        return self.queries[:filled], self.items[:filled]


MEMORY_KINDS = {"ours": CrossBatchMemory, "original": OriginalCrossBatchMemory}


@dataclass(frozen=True)
class MemorySpec:
    """A cross-batch memory of ``size`` past (query, fused) pairs of ``dim`` values each. ``mode``
    "original" is the original release's ring (a step's batch enters it before it is scored)."""

    size: int
    dim: int
    mode: str = "ours"

    def __post_init__(self):
        if self.mode not in MEMORY_KINDS:
            raise ValueError(f"xbm_mode must be one of {tuple(MEMORY_KINDS)}, got {self.mode!r}")

    def build(self) -> nn.Module:
        return MEMORY_KINDS[self.mode](self.size, self.dim)
