"""Symmetric InfoNCE with negatives gathered from every rank.

Each rank scores its LOCAL rows against the GLOBAL batch (all ranks' embeddings) and returns the
mean over its local rows. DDP averages gradients over ranks, and the gather's backward sums the
gradient that every rank's loss sends to a rank's own embeddings, so the gradient a user gets is
exactly the gradient of the world-size-1 loss over the same global batch.
"""
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate `x` over ranks (rank order) along dim 0; gradients flow back to the owner.

    Every rank must pass the same shape (the batch samplers drop the last incomplete batch). An
    integer tensor (labels) has no gradient and is gathered as it is.
    """
    if not is_distributed():
        return x
    if not x.is_floating_point():
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=0)
    return torch.cat(dist_fn.all_gather(x), dim=0)


def local_row_offset(local_batch_size: int) -> int:
    """Index of this rank's first row in the gathered batch."""
    return dist.get_rank() * local_batch_size if is_distributed() else 0


def _cross_entropy_to_global(
    rows: Tensor, columns: Tensor, extra_columns: Tensor | None, logit_scale: Tensor | float, offset: int
) -> Tensor:
    """Mean cross-entropy of local `rows` against all `columns` (+ extra negatives), positive at offset + i."""
    if extra_columns is not None:
        columns = torch.cat([columns, extra_columns.detach().to(columns.dtype)], dim=0)
    logits = logit_scale * rows @ columns.t()
    targets = torch.arange(rows.shape[0], device=rows.device) + offset
    return F.cross_entropy(logits, targets)


def info_nce_gathered(
    a: Tensor,
    b: Tensor,
    all_a: Tensor,
    all_b: Tensor,
    logit_scale: Tensor | float,
    extra_a: Tensor | None = None,
    extra_b: Tensor | None = None,
    offset: int | None = None,
) -> Tensor:
    """InfoNCE when the caller already gathered `all_a`/`all_b` (lets one gather serve several losses).

    `offset`: row of a's first positive in `all_b` (default: this rank's rows in the gathered
    batch; 0 when `all_a`/`all_b` are the local batch itself, i.e. in-batch negatives only)."""
    if a.shape != b.shape:
        raise ValueError(f"info_nce needs paired embeddings of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    offset = local_row_offset(a.shape[0]) if offset is None else offset
    a_to_b = _cross_entropy_to_global(a, all_b, extra_b, logit_scale, offset)
    b_to_a = _cross_entropy_to_global(b, all_a, extra_a, logit_scale, offset)
    return (a_to_b + b_to_a) / 2


def info_nce(
    a: Tensor,
    b: Tensor,
    logit_scale: Tensor | float,
    extra_a: Tensor | None = None,
    extra_b: Tensor | None = None,
) -> Tensor:
    """Symmetric InfoNCE between row-paired (B, D) embeddings a and b, with global negatives.

    extra_b: more negatives for a->b (e.g. memory-bank items), extra_a: for b->a; no gradient.
    """
    return info_nce_gathered(a, b, gather_with_grad(a), gather_with_grad(b), logit_scale, extra_a, extra_b)
