"""The query-driven cross-domain (QCD) objective: the weighted sum of the terms in terms.py.

Options the original release's training needs: in-batch (per-rank) negatives instead of gathered
ones (``local_negatives``), its own cross-batch memory (``xbm_mode="original"``), terms that are
computed and logged but left out of the total (``log_terms``), and queries scored by their
projection as it is rather than its unit vector (``normalize_query=False``).

total = sum over terms of weight[name] * term(name), in the table's order; with the defaults
  fused + title + visual (query-guided InfoNCE) + delta * mean((fused - visual)^2) + caption.
Every InfoNCE uses negatives from all ranks (see contrastive.py); only the embeddings that some
enabled term scores globally are gathered. Each term is handed only the model outputs it declares
that it reads (terms.py), after a check that the model returned them. The optional cross-batch
memory adds past (query, fused) pairs as negatives of the fused term, the one used for retrieval;
when a computed term reads the momentum encoder's outputs, it keeps their momentum features
instead (the queue of ALBEF's contrast, albef.py), which the fused term then scores too.
"""
import dataclasses
import math

import torch
from torch import Tensor, nn

from real20m.losses.contrastive import gather_with_grad, local_row_offset
from real20m.losses.memory_bank import MemorySpec
from real20m.losses.terms import MOMENTUM_PREFIX, TERMS, Term, TermInputs, TermSetting

MAX_LOGIT_SCALE = 100.0
EMBEDDING_KEYS = ("query", "title", "visual", "fused")
OPTIONAL_EMBEDDING_KEYS = ("pair_fused",)  # the paired items of the no-query-guidance ablation
# The in-batch accuracy logged every step compares queries with fused embeddings.
ACCURACY_KEYS = ("query", "fused")
# What the cross-batch memory keeps of each step: (query, fused) pairs, or with a term that reads
# the momentum encoder the momentum features of those pairs (ALBEF's and MoCo's queue).
MEMORY_KEYS = ("query", "fused")
MOMENTUM_MEMORY_KEYS = tuple(MOMENTUM_PREFIX + key for key in MEMORY_KEYS)


def merge_weights(weights: dict | None) -> dict[str, float]:
    unknown = sorted(set(weights or {}) - set(TERMS))
    if unknown:
        raise ValueError(f"unknown QCD loss term(s) {unknown}; known: {sorted(TERMS)}")
    defaults = {name: term.default_weight for name, term in TERMS.items()}
    return {**defaults, **{name: float(value) for name, value in (weights or {}).items()}}


@torch.no_grad()
def topk_accuracy(query: Tensor, all_items: Tensor, ks=(1, 5), offset: int | None = None) -> list[Tensor]:
    """Fraction of local queries whose own item ranks in the top k of the (gathered) batch."""
    scores = query @ all_items.t()
    offset = local_row_offset(query.shape[0]) if offset is None else offset
    targets = torch.arange(query.shape[0], device=query.device) + offset
    ranked = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = ranked == targets[:, None]
    return [hits[:, :k].any(dim=1).float().mean() for k in ks]


def _embedding_keys(terms: list[Term]) -> tuple[str, ...]:
    """The outputs scored as fp32 embeddings, in a fixed order (gathering follows it on every rank):
    the model's own, then any other that a term gathers, in the term table's order."""
    gathered = (key for term in terms for key in term.gathers)
    return tuple(dict.fromkeys((*EMBEDDING_KEYS, *OPTIONAL_EMBEDDING_KEYS, *gathered)))


def _only(values: dict, keys: tuple[str, ...]) -> dict:
    return {key: values[key] for key in keys if key in values}


class QCDLoss(nn.Module):
    def __init__(
        self,
        weights: dict | None = None,
        logit_scale: float = 20.0,
        learnable_scale: bool = False,
        memory: MemorySpec | None = None,
        local_negatives: bool = False,
        log_terms: tuple[str, ...] = (),
        normalize_query: bool = True,
        setting: TermSetting | None = None,
    ):
        super().__init__()
        if not 0 < logit_scale <= MAX_LOGIT_SCALE:
            raise ValueError(f"logit_scale must be in (0, {MAX_LOGIT_SCALE}], got {logit_scale}")
        self.weights = merge_weights(weights)
        self.enabled = [name for name, weight in self.weights.items() if weight != 0]
        # Terms computed and logged but left out of the total (the original's image-text term).
        merge_weights(dict.fromkeys(log_terms, 0.0))  # refuses unknown names
        self.logged_only = [name for name in TERMS if name in log_terms and name not in self.enabled]
        computed = [term for name, term in TERMS.items() if name in self.enabled + self.logged_only]
        self.memory_keys = MOMENTUM_MEMORY_KEYS if any(term.reads_momentum for term in computed) else MEMORY_KEYS
        self.embedding_keys = tuple(dict.fromkeys((*_embedding_keys(computed), *self.memory_keys)))
        self.local_negatives = local_negatives
        self.xbm_mode = memory.mode if memory is not None else "ours"
        self.normalize_query = normalize_query
        # Stored as log(scale) under one name whether learnable or not, so checkpoints load either way.
        log_scale = torch.tensor(math.log(logit_scale))
        if learnable_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)
        self.memory = memory.build() if memory is not None else None
        # The computed terms' own state (queues), saved with the objective; none for most runs.
        self.term_states = nn.ModuleDict({name: TERMS[name].state(setting) for name in self.enabled + self.logged_only
                                          if TERMS[name].state is not None})

    def logit_scale(self) -> Tensor:
        return self.log_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    @property
    def writes_memory_first(self) -> bool:
        """Whether a step's batch enters the memory before it is scored (the original's XBM) rather
        than after."""
        return self.memory is not None and self.xbm_mode == "original"

    def keys_to_gather(self) -> list[str]:
        """Embeddings some computed term scores globally, in a fixed order (the same on every rank);
        none with in-batch (local) negatives."""
        if self.local_negatives:
            return []
        wanted = set(ACCURACY_KEYS).union(*(TERMS[name].gathers for name in self.enabled + self.logged_only))
        if self.memory is not None:
            wanted.update(self.memory_keys)
        return [key for key in self.embedding_keys if key in wanted]

    def check_outputs(self, out: dict) -> None:
        """Every output a computed term (and the logged accuracy) reads is there: one KeyError naming
        the term and the missing outputs otherwise."""
        for name in self.enabled + self.logged_only:
            missing = [key for key in TERMS[name].reads if key not in out]
            if missing:
                raise KeyError(TERMS[name].missing_outputs_message(name, missing))
        missing = [key for key in ACCURACY_KEYS if key not in out]
        if missing:
            raise KeyError(f"the in-batch accuracy reads model outputs {list(ACCURACY_KEYS)}, missing {missing}")

    def compute_term(self, name: str, inputs: TermInputs) -> Tensor:
        """Term ``name`` on the part of ``inputs`` it reads."""
        term = TERMS[name]
        return term.compute(dataclasses.replace(
            inputs, local=_only(inputs.local, term.reads), gathered=_only(inputs.gathered, term.gathers),
            outputs=_only(inputs.outputs, term.reads), state=self.term_states[name] if name in self.term_states else None))

    def forward(self, out: dict, write_memory: bool = True) -> tuple[Tensor, dict[str, float]]:
        """out: the model's outputs, L2-normalised local (B, D) "query", "title", "visual", "fused"
        (with ``normalize_query`` off, "query_raw" in place of "query") and whatever else a term
        reads (the caption logits and targets, any registered output).

        Returns the weighted total and every term's unweighted value as floats (0.0 when disabled).
        While training, the gathered (query, fused) pairs (``memory_keys``) then enter the memory bank, unless
        ``write_memory`` is false (gradient accumulation scores one batch N times, writes it once).
        """
        self.check_outputs(out)
        # Contrastive logits in fp32 even under autocast: softmax over thousands of columns.
        # Integer outputs (category labels) stay integers: a gathered label is compared, not scored.
        local = {key: out[key].float() if out[key].is_floating_point() else out[key]
                 for key in self.embedding_keys if key in out}
        if not self.normalize_query:
            # The original scores the query projection itself: its norm (about 23 on the
            # train-step fixture) multiplies the logit scale of every query-guided term.
            local["query"] = out["query_raw"].float()
        gathered = local if self.local_negatives else \
            {key: gather_with_grad(local[key]) for key in self.keys_to_gather() if key in local}
        write = self.training and write_memory and self.memory is not None
        if write and self.writes_memory_first:
            self.memory.write(*(local[key] for key in self.memory_keys))  # the release writes, then scores
        inputs = TermInputs(local=local, gathered=gathered, scale=self.logit_scale(),
                            memory=self.memory.negatives() if self.memory is not None else None, outputs=out,
                            offset=0 if self.local_negatives else None, xbm_mode=self.xbm_mode,
                            update_state=self.training and write_memory)
        zero = local["query"].new_zeros(())
        terms = {name: self.compute_term(name, inputs) if name in self.enabled else zero for name in self.weights}
        for name in self.logged_only:
            terms[name] = self.compute_term(name, inputs).detach()
        total = sum((self.weights[name] * terms[name] for name in self.enabled[1:]),
                    self.weights[self.enabled[0]] * terms[self.enabled[0]]) if self.enabled else zero
        top1, top5 = topk_accuracy(local["query"].detach(), gathered["fused"].detach(), offset=inputs.offset)
        if write and not self.writes_memory_first:
            self.memory.enqueue(*(gathered[key] for key in self.memory_keys))
        report = {**terms, "total": total, "top1": top1, "top5": top5, "logit_scale": inputs.scale}
        # One device->host copy for all terms instead of one sync per .item().
        values = torch.stack([value.detach().float() for value in report.values()]).tolist()
        return total, dict(zip(report.keys(), values))
