"""Caption decoder: a small GPT-2 that regenerates the query from the visual embedding.

The visual embedding enters as a length-1 encoder sequence for the decoder's cross-attention,
so the loss pushes the visual embedding to carry what the query says (the QCD caption term).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from .towers import set_hf_checkpointing

IGNORE_INDEX = -100  # label value the LM loss skips (padding)


class CaptionDecoder(nn.Module):
    def __init__(self, embed_dim: int, vocab_size: int, n_layer: int, n_head: int, n_embd: int,
                 n_positions: int = 128, dropout: float = 0.1):
        super().__init__()
        config = GPT2Config(
            vocab_size=vocab_size, n_positions=n_positions, n_layer=n_layer, n_head=n_head,
            n_embd=n_embd, add_cross_attention=True, resid_pdrop=dropout, embd_pdrop=dropout,
            attn_pdrop=dropout, use_cache=False,
            # ids of GPT-2's own vocabulary do not apply to the text tokenizer's vocabulary
            bos_token_id=None, eos_token_id=None,
        )
        self.visual_to_decoder = nn.Linear(embed_dim, n_embd)
        self.decoder = GPT2LMHeadModel(config)

    def forward(self, visual: torch.Tensor, query_ids: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
        """Teacher-forced next-token cross-entropy over the non-padding query tokens."""
        max_positions = self.decoder.config.n_positions
        if query_ids.shape[1] > max_positions:
            raise ValueError(
                f"query length {query_ids.shape[1]} exceeds the caption decoder's {max_positions} positions")
        encoder_states = self.visual_to_decoder(visual).unsqueeze(1)  # (B, 1, n_embd)
        logits = self.decoder(
            input_ids=query_ids,
            attention_mask=query_mask,
            encoder_hidden_states=encoder_states,
            use_cache=False,
        ).logits
        # position t predicts token t + 1; padded targets do not count
        targets = query_ids[:, 1:].masked_fill(query_mask[:, 1:] == 0, IGNORE_INDEX)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        set_hf_checkpointing(self.decoder, enabled)
