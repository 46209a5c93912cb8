"""Shared helpers for the model tests: tiny configs, batches and the release fixture folder."""
from pathlib import Path

import pytest
import torch

from real20m.config import parse_config
from real20m.models import build_model

VOCAB = 300
FIXTURE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "upstream_ckpt_tiny"


# The Chinese-CLIP vision tower the tiny config had before its timm CNN: a model with no
# batch-dependent layer (no BatchNorm), so that one item embeds the same in any batch.
TINY_VIT = ["--model.backbone", "chinese_clip", "--model.timm_name", "null", "--model.timm_args", "{}",
            "--model.vision", "{hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 2, "
                              "intermediate_size: 256, patch_size: 16}"]

# The tiny config with the CLIP backbone (the one for English data): small random CLIP text and
# vision towers; the vision tower takes the data's image size.
TINY_CLIP = ["--model.backbone", "clip", "--model.timm_name", "null", "--model.timm_args", "{}",
             "--model.text", "{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
                             "intermediate_size: 64, max_position_embeddings: 64}",
             "--model.vision", "{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
                               "intermediate_size: 64, patch_size: 16}"]


def deterministic_tiny_config(**overrides) -> dict:
    """The tiny config with a small ViT vision tower and every dropout off, so two runs can be
    compared value for value."""
    cfg = parse_config(["--config", "tiny", *TINY_VIT]).model.architecture()
    cfg["text"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg["caption"]["dropout"] = 0.0
    cfg.update(overrides)
    return cfg


def make_batch(batch_size=4, frames=5, image_size=64, query_len=10, title_len=12, seed=0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    query_ids = torch.randint(1, VOCAB, (batch_size, query_len), generator=gen)
    query_mask = torch.ones_like(query_ids)
    query_mask[0, query_len // 2:] = 0  # one padded query
    query_ids[0, query_len // 2:] = 0
    title_ids = torch.randint(1, VOCAB, (batch_size, title_len), generator=gen)
    return {
        "pixels": torch.randn(batch_size, frames, 3, image_size, image_size, generator=gen),
        "title_ids": title_ids,
        "title_mask": torch.ones_like(title_ids),
        "query_ids": query_ids,
        "query_mask": query_mask,
    }


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return build_model(deterministic_tiny_config(), vocab_size=VOCAB)


@pytest.fixture
def release_fixture() -> Path:
    if not (FIXTURE_DIR / "checkpoint.pth.tar").is_file():
        pytest.skip(f"release checkpoint fixture not found at {FIXTURE_DIR}")
    return FIXTURE_DIR
