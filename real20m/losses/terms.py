"""The terms of the QCD objective, one table entry each.

A term is a function of ``TermInputs`` returning a scalar; its name is also the name of its weight
(``loss.weights.<name>``) and of its logged value (``train/<name>`` in TensorBoard). ``reads``
lists the model outputs it reads: the objective checks that the model returned them (naming the
term and what provides them, ``needs``) and hands the term those alone. ``gathers`` lists the
embeddings it scores against the whole (all-rank) batch, so only those are gathered; a gathered
embedding is read. Adding a term is one ``@register_term`` function here (or in any module
imported before the config is resolved), and one ``register_output`` entry (models/outputs.py)
when it reads an output the model does not return yet. A term that keeps something across steps
(a queue) declares ``state``: a module built from the ``TermSetting`` with the objective, saved in
its state_dict (so a resumed run continues with it) and handed to the term as ``inputs.state``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from real20m.losses.contrastive import info_nce_gathered

IGNORE_INDEX = -100  # caption targets the loss skips (padding)
# Outputs of the model's momentum encoder (an EMA copy of it) are named "momentum_<embedding>":
# a computed term that reads one makes the configuration build that copy (models/momentum.py).
MOMENTUM_PREFIX = "momentum_"


@dataclass
class TermInputs:
    """What a term reads, limited to its ``reads``: local (B, D) fp32 embeddings, the gathered
    (all-rank) versions of its ``gathers`` (the local ones themselves with in-batch negatives), the
    logit scale, the memory bank's (queries, items) rows or None and how to use them ("ours":
    extra negatives; "original": the release's XBM), the model outputs as returned, and the row of
    the first local positive in the gathered batch (None: this rank's position), and the term's own
    ``state`` with whether this call may update it (training, once per optimizer step's batch)."""

    local: dict[str, Tensor]
    gathered: dict[str, Tensor]
    scale: Tensor
    memory: tuple[Tensor, Tensor] | None
    outputs: dict
    offset: int | None = None
    xbm_mode: str = "ours"
    state: nn.Module | None = None
    update_state: bool = False


@dataclass(frozen=True)
class TermSetting:
    """What a term's state is built from: the embedding size and the number of goods categories
    (0 when the run reads none)."""

    dim: int
    categories: int = 0


@dataclass(frozen=True)
class Term:
    compute: Callable[[TermInputs], Tensor]
    default_weight: float
    reads: tuple[str, ...] = ()
    gathers: tuple[str, ...] = ()
    needs: str = ""   # what makes the model return the outputs it reads, for the error message
    state: Callable[[TermSetting], nn.Module] | None = None

    @property
    def reads_momentum(self) -> bool:
        """Whether it reads an output of the momentum encoder."""
        return any(key.startswith(MOMENTUM_PREFIX) for key in self.reads)

    def missing_outputs_message(self, name: str, missing: list[str]) -> str:
        message = f"loss term {name!r} reads model output(s) {missing} that the model did not return"
        return f"{message}: the {name} term needs {self.needs}" if self.needs else message


TERMS: dict[str, Term] = {}


def register_term(name: str, default_weight: float = 0.0, reads: tuple[str, ...] = (),
                  gathers: tuple[str, ...] = (), needs: str = "", state: Callable[[TermSetting], nn.Module] | None = None):
    """Decorator: add ``fn(inputs) -> scalar`` to the objective as term ``name``, reading the model
    outputs ``reads`` (and ``gathers``), with the module ``state(setting)`` as its state."""
    def add(compute: Callable[[TermInputs], Tensor]) -> Callable[[TermInputs], Tensor]:
        if name in TERMS:
            raise ValueError(f"loss term {name!r} is already registered")
        TERMS[name] = Term(compute, float(default_weight), tuple(dict.fromkeys((*reads, *gathers))), tuple(gathers),
                           needs, state)
        return compute
    return add


def default_weights() -> dict[str, float]:
    return {name: term.default_weight for name, term in TERMS.items()}


def query_relevance(inputs: TermInputs, item_key: str, memory: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Symmetric InfoNCE between the query and one item embedding, negatives from every rank."""
    extra_query, extra_item = memory if memory is not None else (None, None)
    return info_nce_gathered(inputs.local["query"], inputs.local[item_key], inputs.gathered["query"],
                             inputs.gathered[item_key], inputs.scale, extra_query, extra_item, inputs.offset)


def original_xbm_relevance(inputs: TermInputs) -> Tensor:
    """The release's XBM loss: (query->items + items->query in the batch + query->bank items +
    items->bank queries) / 4, the positive of row i being bank row i (the batch was written first)."""
    query, fused = inputs.local["query"], inputs.local["fused"]
    bank_queries, bank_items = inputs.memory
    targets = torch.arange(query.shape[0], device=query.device)
    in_batch = 2 * query_relevance(inputs, "fused")
    to_bank_items = F.cross_entropy(inputs.scale * query @ bank_items.t().to(query.dtype), targets)
    to_bank_queries = F.cross_entropy(inputs.scale * fused @ bank_queries.t().to(fused.dtype), targets)
    return (in_batch + to_bank_items + to_bank_queries) / 4


# The paper weights every relevance term, the consistency term (delta) and the caption loss by 1;
# the image-text contrast is off. Order = order of summation (kept: it fixes the float result).

@register_term("fused", default_weight=1.0, gathers=("query", "fused"))
def fused_relevance(inputs: TermInputs) -> Tensor:
    """Query vs the fused (retrieval) embedding; the cross-batch memory serves this term only."""
    if inputs.memory is not None and inputs.xbm_mode == "original":
        return original_xbm_relevance(inputs)
    return query_relevance(inputs, "fused", inputs.memory)


@register_term("title", default_weight=1.0, gathers=("query", "title"))
def title_relevance(inputs: TermInputs) -> Tensor:
    return query_relevance(inputs, "title")


@register_term("visual", default_weight=1.0, gathers=("query", "visual"))
def visual_relevance(inputs: TermInputs) -> Tensor:
    return query_relevance(inputs, "visual")


@register_term("consistency", default_weight=1.0, reads=("fused", "visual"))
def fused_visual_consistency(inputs: TermInputs) -> Tensor:
    """mean((fused - visual)^2): keeps the fused embedding near the visual one (delta in the paper)."""
    return (inputs.local["fused"] - inputs.local["visual"]).pow(2).mean()


@register_term("caption", default_weight=1.0, reads=("caption_logits", "caption_targets"),
               needs="a model with a caption decoder (model.caption)")
def caption_generation(inputs: TermInputs) -> Tensor:
    """Teacher-forced cross-entropy of the caption decoder regenerating the query."""
    logits, targets = inputs.outputs["caption_logits"], inputs.outputs["caption_targets"]
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX).float()


@register_term("itc", default_weight=0.0, gathers=("title", "visual"))
def title_visual_contrast(inputs: TermInputs) -> Tensor:
    """Image-text contrast between an item's own title and visual embeddings."""
    return info_nce_gathered(inputs.local["title"], inputs.local["visual"], inputs.gathered["title"],
                             inputs.gathered["visual"], inputs.scale, offset=inputs.offset)


@register_term("pair", default_weight=0.0, gathers=("fused", "pair_fused"),
               needs="batches of item pairs (--query_guidance false)")
def item_pair_contrast(inputs: TermInputs) -> Tensor:
    """Direct item-item contrast between a goods item and a video of the same query (the usual
    cross-domain baseline: the ablation without query guidance)."""
    return info_nce_gathered(inputs.local["fused"], inputs.local["pair_fused"], inputs.gathered["fused"],
                             inputs.gathered["pair_fused"], inputs.scale, offset=inputs.offset)
