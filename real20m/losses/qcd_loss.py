"""The query-driven cross-domain (QCD) objective.

total = w_fused * InfoNCE(query, fused) + w_title * InfoNCE(query, title)
      + w_visual * InfoNCE(query, visual) + delta * mean((fused - visual)^2)
      + w_caption * caption_loss + w_itc * InfoNCE(title, visual)

Every InfoNCE uses negatives from all ranks (see contrastive.py). The optional cross-batch memory
adds past (query, fused) pairs as negatives of the fused term, the one used for retrieval.
"""
import math

import torch
from torch import Tensor, nn

from real20m.losses.contrastive import gather_with_grad, info_nce_gathered, local_row_offset
from real20m.losses.memory_bank import CrossBatchMemory

# The paper weights every relevance term and the caption loss by 1; image-text contrast is off.
DEFAULT_WEIGHTS = {"fused": 1.0, "title": 1.0, "visual": 1.0, "caption": 1.0, "itc": 0.0}
MAX_LOGIT_SCALE = 100.0
EMBEDDING_KEYS = ("query", "title", "visual", "fused")


def merge_weights(weights: dict | None) -> dict[str, float]:
    unknown = sorted(set(weights or {}) - set(DEFAULT_WEIGHTS))
    if unknown:
        raise ValueError(f"unknown QCD loss weight(s) {unknown}; known: {sorted(DEFAULT_WEIGHTS)}")
    return {**DEFAULT_WEIGHTS, **{name: float(value) for name, value in (weights or {}).items()}}


@torch.no_grad()
def topk_accuracy(query: Tensor, all_items: Tensor, ks=(1, 5)) -> list[Tensor]:
    """Fraction of local queries whose own item ranks in the top k of the gathered batch."""
    scores = query @ all_items.t()
    targets = torch.arange(query.shape[0], device=query.device) + local_row_offset(query.shape[0])
    ranked = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = ranked == targets[:, None]
    return [hits[:, :k].any(dim=1).float().mean() for k in ks]


class QCDLoss(nn.Module):
    def __init__(
        self,
        weights: dict | None = None,
        logit_scale: float = 20.0,
        learnable_scale: bool = False,
        delta: float = 1.0,
        xbm_size: int = 0,
        embed_dim: int = 512,
    ):
        super().__init__()
        if not 0 < logit_scale <= MAX_LOGIT_SCALE:
            raise ValueError(f"logit_scale must be in (0, {MAX_LOGIT_SCALE}], got {logit_scale}")
        self.weights = merge_weights(weights)
        self.delta = float(delta)
        # Stored as log(scale) under one name whether learnable or not, so checkpoints load either way.
        log_scale = torch.tensor(math.log(logit_scale))
        if learnable_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)
        self.memory = CrossBatchMemory(xbm_size, embed_dim) if xbm_size > 0 else None

    def logit_scale(self) -> Tensor:
        return self.log_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def _keys_to_gather(self) -> list[str]:
        """Only embeddings some enabled term scores globally (the same list on every rank)."""
        w = self.weights
        keys = ["query", "fused"]  # fused also feeds the in-batch accuracy
        if w["title"] != 0 or w["itc"] != 0:
            keys.append("title")
        if w["visual"] != 0 or w["itc"] != 0:
            keys.append("visual")
        return keys

    def forward(self, out: dict, caption_loss: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """out: L2-normalised local (B, D) embeddings "query", "title", "visual", "fused".

        Returns the weighted total and the unweighted terms as floats (0.0 for disabled terms).
        While training, the gathered (query, fused) pairs then enter the memory bank.
        """
        missing = [key for key in EMBEDDING_KEYS if key not in out]
        if missing:
            raise KeyError(f"QCDLoss needs model outputs {list(EMBEDDING_KEYS)}, missing {missing}")
        # Contrastive logits in fp32 even under autocast: softmax over thousands of columns.
        local = {key: out[key].float() for key in EMBEDDING_KEYS}
        w = self.weights
        gathered = {key: gather_with_grad(local[key]) for key in self._keys_to_gather()}
        scale = self.logit_scale()
        zero = local["query"].new_zeros(())

        def relevance(item_key: str, weight: float, memory: tuple | None = None) -> Tensor:
            if weight == 0:
                return zero
            extra_query, extra_item = memory if memory is not None else (None, None)
            return info_nce_gathered(
                local["query"], local[item_key], gathered["query"], gathered[item_key], scale, extra_query, extra_item
            )

        memory = self.memory.negatives() if self.memory is not None else None
        terms = {
            "rel_fused": relevance("fused", w["fused"], memory),
            "rel_title": relevance("title", w["title"]),
            "rel_visual": relevance("visual", w["visual"]),
            "consistency": (local["fused"] - local["visual"]).pow(2).mean() if self.delta != 0 else zero,
            "caption": caption_loss.float() if caption_loss is not None and w["caption"] != 0 else zero,
            "itc": (
                info_nce_gathered(local["title"], local["visual"], gathered["title"], gathered["visual"], scale)
                if w["itc"] != 0
                else zero
            ),
        }
        total = (
            w["fused"] * terms["rel_fused"]
            + w["title"] * terms["rel_title"]
            + w["visual"] * terms["rel_visual"]
            + self.delta * terms["consistency"]
            + w["caption"] * terms["caption"]
            + w["itc"] * terms["itc"]
        )
        top1, top5 = topk_accuracy(local["query"].detach(), gathered["fused"].detach())
        if self.training and self.memory is not None:
            self.memory.enqueue(gathered["query"], gathered["fused"])
        report = {**terms, "total": total, "top1": top1, "top5": top5, "logit_scale": scale}
        # One device->host copy for all terms instead of one sync per .item().
        values = torch.stack([value.detach().float() for value in report.values()]).tolist()
        return total, dict(zip(report.keys(), values))
