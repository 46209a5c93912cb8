"""Backbones: the families of text + vision towers that ``model.backbone`` names, in one registry.

A backbone is an object that holds everything in which families differ: how its towers are
built from the model configuration, the tokenizer its weights come with, the pixel statistics its
pretrained weights were trained with, whether its vision tower takes one input size only (a ViT's
grid of position embeddings), its text tower's pooling, which weights folders and files it reads,
and what a checkpoint stores to rebuild its towers offline. Nothing outside this module compares
backbone names: the configuration, the factory and the model ask the object.

Adding a vision backbone is one entry: subclass ``Backbone``, implement ``build_vision`` and call
``register_backbone``. Its text tower is a from-scratch one of the transformers family
``text_model_type``: Chinese-CLIP's (BERT) unless the entry names another (``timm_bert``,
``timm_roberta``: a timm vision tower beside a BERT or RoBERTa text tower).

This module imports no model library, so that the configuration can list and check backbones
before anything heavy is imported; the towers module is imported when a tower is first built.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

from real20m.errors import InputError

if TYPE_CHECKING:
    from .towers import TextTower, VisionTower

DEFAULT_BACKBONE = "chinese_clip"
# The transformers family of the from-scratch text tower beside a vision-only backbone, unless
# its entry names another (towers.TEXT_ENCODERS).
VISION_ONLY_TEXT_MODEL_TYPE = "chinese_clip"
# Keys by which a timm folder's config.json (timm's save_for_hf / push_to_hub) is recognised.
TIMM_FOLDER_KEYS = ("architecture", "pretrained_cfg")


class UnknownBackboneError(InputError, ValueError):
    """``model.backbone`` names no registered backbone; the message lists those that are."""


@dataclass(frozen=True, kw_only=True)
class Backbone:
    """A vision backbone beside a from-scratch text tower of the transformers family
    ``text_model_type``; a subclass states what its family does differently.

    ``default_text_pooling``: how the text tower pools its token states when model.text_pooling is
    unset; ``eos_pooling``: its text tower has an end-of-text token to pool (CLIP's);
    ``fixed_input_size``: its vision config's image_size fixes the input size (a from-scratch
    tower is built for data.image_size, pretrained weights need theirs); ``reads_weights_file``: a
    file given as model.pretrained holds its vision weights (otherwise such a file is a whole-model
    checkpoint, as the original's --pretrained was); ``folder_replaces``: the model_cfg entries
    that one of its weights folders supersedes, as the folder names its own architecture."""

    name: str
    text_model_type: str = VISION_ONLY_TEXT_MODEL_TYPE
    default_text_pooling: str = "cls"
    eos_pooling: bool = False
    fixed_input_size: bool = False
    reads_weights_file: bool = False
    folder_replaces: tuple[str, ...] = ()

    def build_vision(self, model_cfg: dict, embed_dim: int) -> VisionTower:
        raise NotImplementedError(f"backbone {self.name!r} does not build a vision tower")

    def build_towers(self, model_cfg: dict, vocab_size: int | None,
                     pad_token_id: int) -> tuple[TextTower, VisionTower]:
        """(text tower, vision tower), both projecting to model_cfg's embed_dim."""
        from .towers import build_random_text_tower

        text = build_random_text_tower(self.text_model_type, model_cfg, vocab_size, pad_token_id,
                                       self.text_pooling(model_cfg))
        return text, self.build_vision(model_cfg, int(model_cfg["embed_dim"]))

    def text_pooling(self, model_cfg: dict) -> str:
        """model.text_pooling, or unset the pooling the text tower was designed with (what its
        pretrained weights expect)."""
        pooling = model_cfg.get("text_pooling") or self.default_text_pooling
        if pooling == "eos" and not self.eos_pooling:
            raise ValueError(f"model.text_pooling eos pools CLIP's end-of-text token; the {self.name} text tower "
                             "has none (use cls or mean)")
        return pooling

    def tokenizer_name(self, pretrained: str | None) -> str | None:
        """The tokenizer that comes with ``pretrained`` weights; None: the text tower starts from
        scratch, with a vocabulary trained on the training text."""
        return None

    def reads_folder(self, description: dict) -> bool:
        """Whether a weights folder whose config.json holds ``description`` is this backbone's."""
        return False

    def folder_kind(self) -> str | None:
        """The weights folders it reads, in words (error messages); None: none."""
        return None

    def pretrained_pixel_stats(self, pretrained: str, vision: VisionTower) -> tuple[list[float], list[float]] | None:
        """(mean, std) the ``pretrained`` vision weights were trained with; None: not stated."""
        return None

    def rebuild_config(self, model_cfg: dict, vision: VisionTower) -> dict:
        """The model_cfg entries that rebuild ``vision`` with no file or hub access (a checkpoint
        stores them), beside those model_cfg has already."""
        return {}


@dataclass(frozen=True, kw_only=True)
class TransformersDualEncoder(Backbone):
    """Both towers of a transformers dual encoder of ``model_type`` (the ``model_type`` of its
    config.json): pretrained (model.pretrained, a hub name or folder, with its tokenizer and image
    processor) or from scratch (model.text / model.vision)."""

    model_type: str
    fixed_input_size: bool = True

    def build_towers(self, model_cfg: dict, vocab_size: int | None,
                     pad_token_id: int) -> tuple[TextTower, VisionTower]:
        from .towers import build_dual_encoder_towers
        return build_dual_encoder_towers(self.model_type, model_cfg, vocab_size, pad_token_id,
                                         self.text_pooling(model_cfg))

    def tokenizer_name(self, pretrained: str | None) -> str | None:
        return pretrained

    def reads_folder(self, description: dict) -> bool:
        return description.get("model_type") == self.model_type

    def folder_kind(self) -> str:
        return f"Hugging Face {self.model_type}"

    def pretrained_pixel_stats(self, pretrained: str, vision: VisionTower) -> tuple[list[float], list[float]] | None:
        from .towers import image_processor_stats
        return image_processor_stats(pretrained)

    def rebuild_config(self, model_cfg: dict, vision: VisionTower) -> dict:
        from .towers import architecture_kwargs
        return {"vision": architecture_kwargs(vision.encoder.config)}


@dataclass(frozen=True, kw_only=True)
class TimmBackbone(Backbone):
    """Any timm model as the vision tower (model.timm_name / timm_args, or a weights file, folder or
    hub name as model.pretrained)."""

    reads_weights_file: bool = True
    folder_replaces: tuple[str, ...] = ("timm_name", "timm_args")

    def build_vision(self, model_cfg: dict, embed_dim: int) -> VisionTower:
        from .towers import build_timm_vision_tower
        return build_timm_vision_tower(model_cfg, embed_dim)

    def reads_folder(self, description: dict) -> bool:
        return any(key in description for key in TIMM_FOLDER_KEYS)

    def folder_kind(self) -> str:
        return "a timm folder with an 'architecture'"

    def pretrained_pixel_stats(self, pretrained: str, vision: VisionTower) -> tuple[list[float], list[float]] | None:
        from .towers import timm_data_stats
        return timm_data_stats(vision.encoder)

    def rebuild_config(self, model_cfg: dict, vision: VisionTower) -> dict:
        """Its name and the constructor arguments a folder's config.json supplied, overridden (as
        timm does) by those this model was configured with."""
        from .towers import timm_architecture
        name, folder_args = timm_architecture(vision.encoder)
        return {"timm_name": name, "timm_args": {**folder_args, **copy.deepcopy(model_cfg.get("timm_args") or {})}}


BACKBONES: dict[str, Backbone] = {}


def register_backbone(backbone: Backbone) -> Backbone:
    """Add ``backbone`` under its name (``model.backbone NAME``); the first registered folder
    reader that recognises a folder takes it."""
    if backbone.name in BACKBONES:
        raise ValueError(f"backbone {backbone.name!r} is already registered")
    BACKBONES[backbone.name] = backbone
    return backbone


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise UnknownBackboneError(f"unknown model.backbone {name!r}; expected one of {sorted(BACKBONES)}")
    return BACKBONES[name]


def backbone_names() -> tuple[str, ...]:
    return tuple(sorted(BACKBONES))


def backbone_of(model_cfg: dict) -> Backbone:
    """The backbone a model_cfg names (a config without the key: the default one)."""
    return get_backbone(model_cfg.get("backbone", DEFAULT_BACKBONE))


register_backbone(TransformersDualEncoder(name="chinese_clip", model_type="chinese_clip"))
register_backbone(TransformersDualEncoder(name="clip", model_type="clip", default_text_pooling="eos", eos_pooling=True))
register_backbone(TimmBackbone(name="timm"))
register_backbone(TimmBackbone(name="timm_bert", text_model_type="bert"))
register_backbone(TimmBackbone(name="timm_roberta", text_model_type="roberta"))
