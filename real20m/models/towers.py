"""Text and vision towers: a Hugging Face / timm encoder followed by a linear projection to D.

The text tower embeds both search queries and item titles (the towers are shared, as in the
paper). Each tower returns the *unnormalised* projection; normalisation happens in the QCD model
so the raw projections stay available (the release check compares them). Which towers a model
gets is its backbone's choice (``backbones``); this module builds them.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable

import torch
from huggingface_hub import try_to_load_from_cache
from torch import nn
from transformers import (
    AutoImageProcessor,
    BertConfig,
    BertModel,
    ChineseCLIPModel,
    ChineseCLIPTextConfig,
    ChineseCLIPTextModel,
    ChineseCLIPVisionConfig,
    ChineseCLIPVisionModel,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    RobertaConfig,
    RobertaModel,
)

from real20m.errors import InputError

logger = logging.getLogger(__name__)

# Config fields that describe bookkeeping, not architecture; they are dropped when a config is
# written back into model_cfg so that the dict rebuilds the same network.
_CONFIG_BOOKKEEPING = {
    "architectures", "model_type", "transformers_version", "_name_or_path", "name_or_path",
    "torch_dtype", "dtype", "output_hidden_states", "output_attentions", "return_dict",
    "id2label", "label2id", "problem_type", "tokenizer_class", "chunk_size_feed_forward",
    "is_encoder_decoder", "is_decoder", "add_cross_attention", "tie_word_embeddings",
    "_attn_implementation_autoset", "projection_dim", "use_cache",
}


def architecture_kwargs(config) -> dict:
    """The config's fields as plain kwargs, without bookkeeping entries (JSON-serialisable)."""
    return {
        key: value for key, value in config.to_dict().items()
        if key not in _CONFIG_BOOKKEEPING and not key.startswith("_")
        and isinstance(value, (int, float, str, bool, type(None), list))
    }


def set_hf_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Toggle activation checkpointing on a transformers model (API renamed in transformers 5)."""
    if enabled:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    else:
        disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
        disable()


def masked_mean(states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, L, H) token states -> (B, H) mean over the tokens the mask keeps (all without a mask)."""
    if attention_mask is None:
        return states.mean(dim=1)
    weights = attention_mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


# model.text_pooling -> (encoder output, attention mask) -> (B, H) text feature.
TEXT_POOLINGS = {
    "cls": lambda out, mask: out.last_hidden_state[:, 0],   # BERT / Chinese-CLIP: the [CLS] state
    "eos": lambda out, mask: out.pooler_output,             # CLIP: the end-of-text token's state
    "mean": lambda out, mask: masked_mean(out.last_hidden_state, mask),
}


class TextTower(nn.Module):
    """A transformers text encoder, pooled (``TEXT_POOLINGS``), + Linear(hidden -> D)."""

    def __init__(self, encoder: nn.Module, projection: nn.Linear, pooling: str):
        super().__init__()
        if pooling not in TEXT_POOLINGS:
            raise ValueError(f"unknown text pooling {pooling!r}; expected one of {sorted(TEXT_POOLINGS)}")
        self.encoder = encoder
        self.projection = projection
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return self.projection(TEXT_POOLINGS[self.pooling](out, attention_mask))

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        set_hf_checkpointing(self.encoder, enabled)


class VisionTower(nn.Module):
    """Per-image encoder + Linear(width -> D). Input (N, 3, H, W).

    The encoder maps pixels to a pooled (N, width) feature, as a timm model without classifier
    does; one with timm's ``set_grad_checkpointing`` can recompute its activations."""

    def __init__(self, encoder: nn.Module, projection: nn.Linear):
        super().__init__()
        self.encoder = encoder
        self.projection = projection

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.projection(self.pooled(pixels))

    def pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixels)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        toggle = getattr(self.encoder, "set_grad_checkpointing", None)
        if toggle is not None:
            toggle(enabled)
        elif enabled:
            raise ValueError(f"model.gradient_checkpointing: the vision encoder {type(self.encoder).__name__} "
                             "cannot recompute its activations (it has no set_grad_checkpointing)")


class TransformersVisionTower(VisionTower):
    """A transformers vision model, whose pooler_output is the image feature."""

    def pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values=pixels).pooler_output

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        set_hf_checkpointing(self.encoder, enabled)


def _text_config_kwargs(model_cfg: dict, vocab_size: int | None, pad_token_id: int) -> dict:
    kwargs = dict(model_cfg.get("text") or {})
    if vocab_size is not None:
        kwargs["vocab_size"] = vocab_size
    kwargs["pad_token_id"] = pad_token_id
    return kwargs


def _projection(width: int, embed_dim: int) -> nn.Linear:
    return nn.Linear(width, embed_dim, bias=False)


class PretrainedNotAvailableError(InputError, OSError):
    """A hub name that is neither a local folder nor cached, with downloads switched off."""


class PretrainedInputError(InputError, ValueError):
    """Pretrained weights that cannot take this run's inputs; the message says what to set."""


def describe_pretrained_source(pretrained: str, option: str = "model.pretrained") -> str:
    """Where ``from_pretrained(pretrained)`` will read from: a local folder, the local Hugging Face
    cache, or the network (a download). Offline (HF_HUB_OFFLINE=1) and not cached is an error
    naming ``option``, where the name came from."""
    if os.path.isdir(pretrained):
        return f"local folder {pretrained}"
    cached = try_to_load_from_cache(pretrained, "config.json")
    if isinstance(cached, str):
        return f"the local Hugging Face cache ({os.path.dirname(cached)})"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise PretrainedNotAvailableError(
            f"{option} {pretrained!r} is not a folder and not in the local Hugging Face cache, and "
            f"HF_HUB_OFFLINE=1: download it once with network access, or give a local folder")
    return f"the network (downloading {pretrained} from the Hugging Face hub)"


@dataclass(frozen=True)
class DualEncoderClasses:
    """The transformers classes of one dual-encoder family: the whole pretrained pair, and each
    tower from scratch (config kwargs -> encoder)."""
    pair: type
    text: Callable[[dict], nn.Module]
    vision: Callable[[dict], nn.Module]


# transformers model_type -> its classes (``backbones.TransformersDualEncoder.model_type``).
DUAL_ENCODER_CLASSES = {
    # add_pooling_layer=False: the [CLS] hidden state is projected directly (no tanh pooler).
    "chinese_clip": DualEncoderClasses(
        ChineseCLIPModel,
        lambda kwargs: ChineseCLIPTextModel(ChineseCLIPTextConfig(**kwargs), add_pooling_layer=False),
        lambda kwargs: ChineseCLIPVisionModel(ChineseCLIPVisionConfig(**kwargs))),
    "clip": DualEncoderClasses(
        CLIPModel,
        lambda kwargs: CLIPTextModel(CLIPTextConfig(**kwargs)),
        lambda kwargs: CLIPVisionModel(CLIPVisionConfig(**kwargs))),
}


# transformers model_type -> a from-scratch text encoder (config kwargs -> encoder): the dual
# encoders' text towers, and the text-only families a vision-only backbone can sit beside
# (``backbones.Backbone.text_model_type``). No pooling layer: ``TEXT_POOLINGS`` pools the states.
TEXT_ENCODERS: dict[str, Callable[[dict], nn.Module]] = {
    **{model_type: classes.text for model_type, classes in DUAL_ENCODER_CLASSES.items()},
    "bert": lambda kwargs: BertModel(BertConfig(**kwargs), add_pooling_layer=False),
    "roberta": lambda kwargs: RobertaModel(RobertaConfig(**kwargs), add_pooling_layer=False),
}

# transformers model_type -> the rows of its position table that no token takes: RoBERTa numbers
# positions from pad_token_id + 1.
RESERVED_POSITIONS: dict[str, Callable] = {"roberta": lambda config: config.pad_token_id + 1}


def max_text_tokens(config) -> int:
    """Longest token sequence a text encoder with this config embeds."""
    reserved = RESERVED_POSITIONS.get(config.model_type)
    return int(config.max_position_embeddings) - (reserved(config) if reserved else 0)


def _load_pretrained_pair(model_type: str, pretrained: str):
    """Load the full dual-encoder once; both towers and projections are taken from it.

    A hub name is downloaded unless it is cached (set HF_HUB_OFFLINE=1 to forbid downloads);
    one log line says where the weights come from."""
    logger.info("loading the %s backbone from %s", model_type, describe_pretrained_source(pretrained))
    return DUAL_ENCODER_CLASSES[model_type].pair.from_pretrained(pretrained)


def _check_input_size(vision_config, image_size: int | None, pretrained: str) -> None:
    """A pretrained ViT takes the image size it was trained at (its position embeddings are that
    grid); the run's --image_size must be that size."""
    if image_size is not None and vision_config.image_size != image_size:
        raise PretrainedInputError(
            f"model.pretrained {pretrained}: its vision tower takes {vision_config.image_size}-pixel images and "
            f"this run's --image_size is {image_size}: set --image_size {vision_config.image_size}")


def _match_vocab(encoder: nn.Module, vocab_size: int | None) -> None:
    current = encoder.get_input_embeddings().num_embeddings
    if vocab_size is not None and vocab_size != current:
        encoder.resize_token_embeddings(vocab_size)


def build_dual_encoder_towers(model_type: str, model_cfg: dict, vocab_size: int | None, pad_token_id: int,
                              pooling: str) -> tuple[TextTower, VisionTower]:
    """Both towers of a pretrained transformers dual encoder of ``model_type``, or random ones from
    model_cfg `text` / `vision`."""
    embed_dim = int(model_cfg["embed_dim"])
    pretrained = model_cfg.get("pretrained")
    if pretrained:
        pair = _load_pretrained_pair(model_type, pretrained)
        if pair.text_projection.out_features != embed_dim:
            raise ValueError(
                f"model.embed_dim={embed_dim} but pretrained {pretrained!r} projects to "
                f"{pair.text_projection.out_features}"
            )
        _check_input_size(pair.vision_model.config, model_cfg.get("image_size"), pretrained)
        _match_vocab(pair.text_model, vocab_size)
        text = TextTower(pair.text_model, pair.text_projection, pooling)
        vision = TransformersVisionTower(pair.vision_model, pair.visual_projection)
        return text, vision
    text = build_random_text_tower(model_type, model_cfg, vocab_size, pad_token_id, pooling)
    return text, _build_random_dual_encoder_vision_tower(model_type, model_cfg, embed_dim)


def build_random_text_tower(model_type: str, model_cfg: dict, vocab_size: int | None, pad_token_id: int,
                            pooling: str) -> TextTower:
    """A from-scratch text tower of the transformers family ``model_type`` from model_cfg `text`."""
    encoder = TEXT_ENCODERS[model_type](_text_config_kwargs(model_cfg, vocab_size, pad_token_id))
    return TextTower(encoder, _projection(encoder.config.hidden_size, int(model_cfg["embed_dim"])), pooling)


def _build_random_dual_encoder_vision_tower(model_type: str, model_cfg: dict, embed_dim: int) -> VisionTower:
    encoder = DUAL_ENCODER_CLASSES[model_type].vision(dict(model_cfg.get("vision") or {}))
    return TransformersVisionTower(encoder, _projection(encoder.config.hidden_size, embed_dim))


TIMM_HUB_PREFIX = "hf-hub:"


def build_timm_vision_tower(model_cfg: dict, embed_dim: int) -> VisionTower:
    """``model.pretrained``: None (random ``timm_name``), a weights file for ``timm_name``, a folder
    in timm's own layout (``timm.models.save_for_hf``: config.json + weights, which name the
    architecture) or a hub name (``hf-hub:`` optional). ``timm_args``: constructor kwargs, written
    by ``QCDModel.resolved_config`` so that a model made from a folder rebuilds without it."""
    import timm  # only needed for this backbone

    name = model_cfg.get("timm_name")
    pretrained = model_cfg.get("pretrained")
    kwargs = dict(model_cfg.get("timm_args") or {}, num_classes=0)
    if pretrained and not os.path.isfile(pretrained):
        # A folder or hub repository carries its own config.json: architecture, its constructor
        # arguments and its data config (the pixel statistics).
        hub_id = pretrained.removeprefix(TIMM_HUB_PREFIX)
        logger.info("loading the timm backbone from %s", describe_pretrained_source(hub_id))
        source = f"local-dir:{hub_id}" if os.path.isdir(hub_id) else f"{TIMM_HUB_PREFIX}{hub_id}"
        encoder = timm.create_model(source, pretrained=True, **kwargs)
        architecture = encoder.pretrained_cfg["architecture"]
        if name and name.split(".")[0] != architecture:
            raise ValueError(f"model.timm_name={name!r} but model.pretrained {pretrained!r} is a {architecture!r}")
    elif name:
        if pretrained:
            logger.info("loading the timm backbone %s from local file %s", name, pretrained)
        extra = dict(pretrained=True, pretrained_cfg_overlay={"file": pretrained}) if pretrained else {}
        encoder = timm.create_model(name, **kwargs, **extra)
    else:
        raise ValueError("model.backbone 'timm' needs model.timm_name (or a timm folder or hub name as "
                         "model.pretrained)")
    return VisionTower(encoder, _projection(encoder.num_features, embed_dim))


def timm_architecture(encoder: nn.Module) -> tuple[str, dict]:
    """(model name, constructor kwargs) that rebuild a timm encoder's architecture with no file or
    hub access: the kwargs a folder or hub config.json supplied (without the classifier size,
    always 0 here). The pretrained tag stays in the name when timm knows it, as a tag can set
    constructor defaults (a ViT's image size)."""
    import timm

    args = {key: value for key, value in getattr(encoder, "pretrained_model_args", {}).items()
            if key != "num_classes"}
    name, tag = encoder.pretrained_cfg["architecture"], encoder.pretrained_cfg.get("tag")
    tagged = f"{name}.{tag}"
    return (tagged if tag and tagged in timm.list_pretrained(tagged) else name), args


def _channel_values(values, what: str) -> list[float]:
    values = [float(values)] * 3 if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(values) != 3:
        raise ValueError(f"pixel {what} must have 3 values (RGB), got {values}")
    return values


def timm_data_stats(encoder: nn.Module) -> tuple[list[float], list[float]]:
    """(mean, std) of a timm model's data config: those of its loaded weights (their pretrained_cfg)."""
    from timm.data import resolve_data_config
    config = resolve_data_config(model=encoder)
    return _channel_values(config["mean"], "mean"), _channel_values(config["std"], "std")


def image_processor_stats(pretrained: str) -> tuple[list[float], list[float]] | None:
    """(mean, std) of a transformers image processor: image_mean/image_std of preprocessor_config.json,
    from the same folder, cache or hub as the weights (so HF_HUB_OFFLINE=1 applies); None when
    there is none."""
    try:
        processor = AutoImageProcessor.from_pretrained(pretrained)
    except OSError as error:
        logger.warning("%s has no image processor config (%s); normalising pixels with ImageNet statistics",
                       pretrained, str(error).splitlines()[0])
        return None
    return _channel_values(processor.image_mean, "mean"), _channel_values(processor.image_std, "std")
