"""Caption decoder: a small GPT-2 that regenerates the query from the visual embedding.

The visual embedding enters as a length-1 encoder sequence for the decoder's cross-attention,
so the objective's caption term pushes the visual embedding to carry what the query says.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from real20m.losses.terms import IGNORE_INDEX

from .towers import set_hf_checkpointing


@dataclass(frozen=True)
class CaptionConfig:
    """The ``caption`` section of a model architecture (see ``CaptionDecoder`` for the options)."""

    n_layer: int
    n_head: int
    n_embd: int
    n_positions: int = 128
    dropout: float = 0.1
    ignore_padding: bool = True
    token_type_ids: bool = False
    visual_projection: bool = True
    attn_implementation: str | None = None


class CaptionDecoder(nn.Module):
    """GPT-2 with cross-attention to the visual embedding.

    Options the original release's decoder needs: ``ignore_padding=False`` (its labels are the
    query ids, padding included), ``token_type_ids=True`` (it passes the tokenizer's all-zero
    token types, which GPT-2 embeds with its word embeddings), ``visual_projection=False`` (the
    visual embedding enters as it is; needs n_embd == embed_dim) and ``attn_implementation="eager"``
    (its attention as explicit softmax weights). With one encoder position the cross-attention's
    softmax is constant, so its query projection, its LayerNorm and its key projection have no
    gradient; the explicit softmax gives them exactly 0, transformers' default kernel (sdpa, None)
    rounding noise, which Adam turns into steps of the full learning rate."""

    def __init__(self, embed_dim: int, vocab_size: int, options: CaptionConfig):
        super().__init__()
        if not options.visual_projection and options.n_embd != embed_dim:
            raise ValueError(f"caption decoder without a visual projection needs n_embd ({options.n_embd}) == "
                             f"embed_dim ({embed_dim})")
        self.ignore_padding = options.ignore_padding
        self.token_type_ids = options.token_type_ids
        dropout = options.dropout
        config = GPT2Config(
            vocab_size=vocab_size, n_positions=options.n_positions, n_layer=options.n_layer,
            n_head=options.n_head, n_embd=options.n_embd, add_cross_attention=True, resid_pdrop=dropout,
            embd_pdrop=dropout, attn_pdrop=dropout, use_cache=False,
            # ids of GPT-2's own vocabulary do not apply to the text tokenizer's vocabulary
            bos_token_id=None, eos_token_id=None, attn_implementation=options.attn_implementation,
        )
        self.visual_to_decoder = (nn.Linear(embed_dim, options.n_embd) if options.visual_projection
                                  else nn.Identity())
        self.decoder = GPT2LMHeadModel(config)

    def forward(self, visual: torch.Tensor, query_ids: torch.Tensor,
                query_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced next-token logits (B, L-1, V) and their targets (B, L-1): position t
        predicts token t + 1; padded targets are IGNORE_INDEX (the objective skips them) unless
        ``ignore_padding`` is off."""
        max_positions = self.decoder.config.n_positions
        if query_ids.shape[1] > max_positions:
            raise ValueError(
                f"query length {query_ids.shape[1]} exceeds the caption decoder's {max_positions} positions")
        encoder_states = self.visual_to_decoder(visual).unsqueeze(1)  # (B, 1, n_embd)
        logits = self.decoder(
            input_ids=query_ids,
            attention_mask=query_mask,
            token_type_ids=torch.zeros_like(query_ids) if self.token_type_ids else None,
            encoder_hidden_states=encoder_states,
            use_cache=False,
        ).logits
        targets = query_ids[:, 1:]
        if self.ignore_padding:
            targets = targets.masked_fill(query_mask[:, 1:] == 0, IGNORE_INDEX)
        return logits[:, :-1], targets

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        set_hf_checkpointing(self.decoder, enabled)
