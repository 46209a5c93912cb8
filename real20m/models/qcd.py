"""The QCD (query-driven cross-domain) model: shared text tower, vision tower, frame transformer,
title/visual attention pooling and an optional caption decoder.

model_cfg keys (YAML section `model:`):
    backbone      a registered backbone (``backbones``): chinese_clip | clip | timm
    pretrained    hub name / local folder for chinese_clip and clip (from_pretrained), a local weights
                  file for timm, or null for random init from `text` / `vision`
    text, vision  HF config kwargs for random init (the tokenizer's vocab_size overrides text's;
                  for a random `clip` text tower set text.eos_token_id to the tokenizer's end
                  token, whose position CLIP pools)
    timm_name     timm model name (backbone timm); timm_args: its constructor kwargs (resolved configs)
    embed_dim     D; clip_length: frames per video; frame_heads: heads of the frame transformer
    frame_aggregation  transformer (default) | mean | xclip | a registered one (component_registry);
                  frame_init: default | original
    text_pooling  cls | eos | mean (token states -> text feature); absent = the backbone's own
                  (eos for clip, else cls)
    fusion        attention (default) | title_only | visual_only | combiner | a registered one
    caption       {n_layer, n_head, n_embd[, n_positions, dropout, ignore_padding, token_type_ids,
                  visual_projection, attn_implementation]} or null (no caption decoder)
    category_classes  outputs of a goods-category head on the fused embedding; absent / 0 for none
    gradient_checkpointing (bool), use_title_mask / use_query_mask (bool, default true; false =
                  the original's unmasked titles and queries), frame_fp16 (bool, default false;
                  true = the original's frame transformer under fp16 autocast on CUDA)
    pixel_stats   backbone | imagenet | {mean: [r, g, b], std: [r, g, b]}; absent = imagenet
                  (see below)
    momentum      EMA coefficient of a momentum encoder (momentum.py), or absent / null for none

Pixels: the data loader gives raw uint8 RGB frames, which the model normalises on its own device
(``normalize_pixels``: /255, minus mean, over std), so that loader workers do no float work.
Float pixels are taken as already normalised and used as they are (the release fixtures and any
caller that normalises itself). The statistics: ``backbone`` takes those the pretrained vision
backbone was trained with (its image processor config, or timm's data config), and ImageNet's
for a from-scratch tower, which has no preference of its own: ImageNet's are what every tower of
this project was trained with before, so a from-scratch model embeds exactly as it always did.
``imagenet`` is the original release's (``--compat original``), and a config without the key
(release layouts, checkpoints saved before the option existed) was trained with those too.
``resolved_config`` writes the explicit values, so whatever rebuilds the model from it
(evaluation, conversion, resume) normalises as training did, without reading the backbone again.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .architecture_defaults import with_defaults
from .backbones import backbone_of
from .caption import CaptionConfig, CaptionDecoder
from .component_registry import FRAME_AGGREGATIONS, FUSIONS
from .lr_groups import QCD_LR_GROUPS
from .momentum import MomentumEncoder
from .outputs import add_registered_outputs
from .towers import architecture_kwargs, max_text_tokens

# ImageNet statistics: the original release's, and those of every config without pixel_stats.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PIXEL_STATS = ("backbone", "imagenet")


def resolve_pixel_stats(model_cfg: dict, vision) -> dict[str, list[float]]:
    """{"mean", "std"} (3 floats each) that ``model_cfg["pixel_stats"]`` names (module docstring)."""
    stats = model_cfg.get("pixel_stats")
    if isinstance(stats, dict):
        mean, std = [float(v) for v in stats.get("mean", ())], [float(v) for v in stats.get("std", ())]
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"model.pixel_stats needs 3 means and 3 positive stds, got {stats}")
        return {"mean": mean, "std": std}
    if stats not in (None, *PIXEL_STATS):
        raise ValueError(f"model.pixel_stats must be one of {PIXEL_STATS} or {{mean, std}}, got {stats!r}")
    pretrained = model_cfg.get("pretrained")
    # A from-scratch tower has no preference of its own.
    stated = backbone_of(model_cfg).pretrained_pixel_stats(pretrained, vision) \
        if stats == "backbone" and pretrained else None
    mean, std = stated or (IMAGENET_MEAN, IMAGENET_STD)
    return {"mean": list(mean), "std": list(std)}


@dataclass
class ItemEmbeddings:
    title: torch.Tensor         # (B, D) L2-normalised
    visual: torch.Tensor        # (B, D) L2-normalised
    fused: torch.Tensor         # (B, D) L2-normalised, the retrieval embedding
    pool_weights: torch.Tensor  # (B, 2) softmax weights (title, visual)


class QCDModel(nn.Module):
    # The parts that train at their own learning rate (``lr_groups``), by parameter-name prefix.
    LR_GROUPS = QCD_LR_GROUPS

    def __init__(self, model_cfg: dict, vocab_size: int | None = None, pad_token_id: int = 0):
        super().__init__()
        self.model_cfg = copy.deepcopy(model_cfg)
        model_cfg = with_defaults(model_cfg)
        self.embed_dim = int(model_cfg["embed_dim"])
        self.backbone = backbone_of(model_cfg)
        self.text, self.vision = self.backbone.build_towers(model_cfg, vocab_size, pad_token_id)
        aggregation = FRAME_AGGREGATIONS.lookup(model_cfg["frame_aggregation"])
        self.frame = aggregation(self.embed_dim, int(model_cfg["clip_length"]), int(model_cfg["frame_heads"]),
                                 init=model_cfg["frame_init"])
        self.pooling = FUSIONS.lookup(model_cfg["fusion"])(self.embed_dim)
        caption_cfg = model_cfg.get("caption")
        text_vocab = self.text.encoder.get_input_embeddings().num_embeddings
        self.caption = CaptionDecoder(self.embed_dim, text_vocab, CaptionConfig(**caption_cfg)) if caption_cfg else None
        # Only with the category term weighted, so that other models initialise (and draw) as before.
        classes = int(model_cfg["category_classes"])
        self.category_head = nn.Linear(self.embed_dim, classes) if classes else None
        self.use_title_mask = bool(model_cfg["use_title_mask"])
        self.use_query_mask = bool(model_cfg["use_query_mask"])
        self.vision_frozen = False   # freeze_vision()
        self.frame_fp16 = bool(model_cfg["frame_fp16"])
        self.pixel_stats = resolve_pixel_stats(model_cfg, self.vision)
        # Non-persistent buffers: they follow the model to its device (a host-to-GPU copy of the
        # statistics at every step would wait for the GPU) and stay out of state dicts (the
        # checkpoint's model_cfg holds them: resolved_config).
        self.register_buffer("pixel_mean", torch.tensor(self.pixel_stats["mean"]).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.pixel_stats["std"]).view(3, 1, 1), persistent=False)
        self.set_gradient_checkpointing(bool(model_cfg["gradient_checkpointing"]))
        # A copy of the parts above, so made last; only when asked (momentum.py), so that other
        # models initialise exactly as before.
        momentum = model_cfg.get("momentum")
        self.momentum_encoder = MomentumEncoder(self, momentum) if momentum is not None else None

    def normalize_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(..., 3, H, W) uint8 RGB -> float32 (pixels / 255 - mean) / std; float pixels pass unchanged.

        The same operations in the same order as torchvision's ToTensor + Normalize, so the result
        is bitwise what the loader used to send."""
        if pixels.dtype != torch.uint8:
            return pixels
        return pixels.float().div(255).sub(self.pixel_mean).div(self.pixel_std)

    # ----------------------------------------------------------------- raw (unnormalised) features
    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, L) token ids -> (B, D) projected [CLS] (or EOS) state, not normalised."""
        return self.text(input_ids, attention_mask)

    def frame_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) images (uint8, or float already normalised) -> (N, D) projected image
        embeddings, not normalised."""
        return self.vision(self.normalize_pixels(pixels))

    @property
    def max_text_tokens(self) -> int:
        """Longest token sequence the text tower embeds (its position embeddings)."""
        return max_text_tokens(self.text.encoder.config)

    # ----------------------------------------------------------------------------- embeddings
    def query_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) query token ids -> (B, D) projection, not normalised (unmasked under compat)."""
        mask = attention_mask if self.use_query_mask else None
        return self.text_features(input_ids, mask)

    def encode_query(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.query_features(input_ids, attention_mask), dim=-1)

    def encode_items(self, title_ids: torch.Tensor, title_mask: torch.Tensor | None,
                     pixels: torch.Tensor) -> ItemEmbeddings:
        """Titles (B, L) and frames (B, T, 3, H, W), T = clip_length or 1, uint8 or normalised
        float (see the module docstring), -> ItemEmbeddings."""
        if pixels.dim() != 5:
            raise ValueError(f"pixels must be (B, T, 3, H, W); got {tuple(pixels.shape)}")
        # The original embeds titles without an attention mask (padding is attended to).
        mask = title_mask if self.use_title_mask else None
        title = F.normalize(self.text_features(title_ids, mask), dim=-1)
        batch, frames_per_item = pixels.shape[:2]
        frames = self.frame_features(pixels.flatten(0, 1)).view(batch, frames_per_item, -1)
        # The original always runs its frame transformer under fp16 autocast on a GPU (compat mode).
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.frame_fp16 and frames.is_cuda):
            visual = self.frame(frames).to(frames.dtype)
        fused, weights = self.pooling(title, visual)
        return ItemEmbeddings(title=title, visual=visual, fused=fused, pool_weights=weights)

    def forward(self, batch: dict) -> dict:
        """Training step outputs: {"query", "title", "visual", "fused"}, each (B, D) unit-norm, the
        query's projection before normalisation "query_raw" (what the original's objective scores),
        and with a caption decoder its next-token "caption_logits" and "caption_targets"; for a
        batch of item pairs (``batch["pair"]``) the paired items' "pair_fused"; with a momentum
        encoder, in training mode, its "momentum_query" and "momentum_fused"; the batch's goods-category
        labels "category" when it has them, and with a category head the fused embedding's
        "category_logits"; then every output registered in outputs.py."""
        items = self.encode_items(batch["title_ids"], batch.get("title_mask"), batch["pixels"])
        query_raw = self.query_features(batch["query_ids"], batch["query_mask"])
        out = {"query": F.normalize(query_raw, dim=-1), "query_raw": query_raw, "title": items.title,
               "visual": items.visual, "fused": items.fused}
        if "pair" in batch:  # item pairs (no query guidance): the video of each goods item's query
            pair = batch["pair"]
            out["pair_fused"] = self.encode_items(pair["title_ids"], pair.get("title_mask"), pair["pixels"]).fused
        if self.caption is not None:
            out["caption_logits"], out["caption_targets"] = self.caption(
                items.visual, batch["query_ids"], batch["query_mask"])
        if self.momentum_encoder is not None and self.training:
            out.update(self.momentum_encoder(batch))
        if "category" in batch:   # passed through, so that loss terms read (and gather) it as an output
            out["category"] = batch["category"]
        if self.category_head is not None:
            out["category_logits"] = self.category_head(items.fused)
        return add_registered_outputs(self, batch, out)

    def update_momentum(self) -> None:
        """One EMA step of the momentum encoder, if there is one: once after each optimizer step."""
        if self.momentum_encoder is not None:
            self.momentum_encoder.update(self)

    # ------------------------------------------------------------------------------ training
    def freeze_vision(self) -> None:
        """A frozen vision tower (the original without --finetune): no gradient, no optimizer step,
        and always in eval mode, so its normalisation statistics (a CNN's BatchNorm) stay fixed too."""
        self.vision.requires_grad_(False)
        self.vision_frozen = True
        self.vision.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.vision_frozen:
            self.vision.eval()
        return self

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.text.set_gradient_checkpointing(enabled)
        self.vision.set_gradient_checkpointing(enabled)
        self.frame.gradient_checkpointing = enabled
        if self.caption is not None:
            self.caption.set_gradient_checkpointing(enabled)

    def resolved_config(self) -> dict:
        """A model_cfg that rebuilds this exact architecture offline (no pretrained download).

        The towers' actual configs replace `text` and what the backbone needs for the vision tower
        (a transformers config as `vision`, a timm tower's name and constructor kwargs), and the
        pixel statistics are written out, so a model made from a hub name or a folder can be
        rebuilt from the converted weights alone.
        """
        cfg = copy.deepcopy(self.model_cfg)
        cfg["text"] = architecture_kwargs(self.text.encoder.config)
        cfg.update(self.backbone.rebuild_config(self.model_cfg, self.vision))
        cfg["pretrained"] = None
        cfg["pixel_stats"] = copy.deepcopy(self.pixel_stats)
        cfg["use_title_mask"] = self.use_title_mask
        cfg["use_query_mask"] = self.use_query_mask
        cfg["frame_fp16"] = self.frame_fp16
        return cfg


def build_model(model_cfg: dict, vocab_size: int | None = None, pad_token_id: int = 0) -> QCDModel:
    return QCDModel(model_cfg, vocab_size=vocab_size, pad_token_id=pad_token_id)
