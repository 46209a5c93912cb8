"""Where a model for feature extraction and search comes from, inspected once.

A source is one of: the untrained model (``init``: the baseline that shows what training
bought), a training checkpoint of ours (it carries its resolved configuration, architecture and
tokenizer), a checkpoint in the paper's release layout, or a model exported by
``python -m real20m.models.convert`` (a folder or a ``.safetensors`` file). ``inspect_source``
reads it once; the source then gives the configuration layer of the input settings it was
trained with (``config.resolve_layers`` puts it between the YAML file and the command line), and
builds and loads the model and tokenizer for the resolved configuration.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

from real20m.assets import CHINESE_BERT_VOCAB_DIR
from real20m.config import Config, ConfigError, ModelConfig, TrainedSetting
from real20m.datasets import build_tokenizer, build_train_dataset, load_saved_tokenizer
from real20m.factory import build_model, build_tokenizer_for, restore_tokenizer, with_embedding_inputs
from real20m.models import QCDModel
from real20m.models.convert import CONVERTED_CONFIG, CONVERTED_WEIGHTS, load_weights_into
from real20m.models.release_layout import WeightMismatchError, is_release_checkpoint, release_architecture
from real20m.utils.checkpoint_io import load_checkpoint

logger = logging.getLogger(__name__)

UNTRAINED = "init"

# Input settings a model was trained with; evaluating with other values would feed it inputs it
# never saw (or cannot take: a from-scratch ViT has a fixed image size; an English model, Chinese titles).
TRAINED_INPUT_SETTINGS = ("image_size", "clip_length", "max_query_len", "max_title_len", "query_language")


# What a release checkpoint decides when training starts from it; the rest (caption decoder,
# fusion, frame aggregation, pooling) is the run's own configuration.
RELEASE_TOWER_FIELDS = ("backbone", "pretrained", "text", "vision", "timm_name", "embed_dim", "frame_heads")


def load_weights(model: QCDModel, checkpoint: dict, origin: str | None = None) -> str:
    """Load a checkpoint dict (read from ``origin``) strictly; returns the summary. A mismatch
    names the file."""
    try:
        return load_weights_into(model, checkpoint)
    except WeightMismatchError as error:
        raise WeightMismatchError(f"{origin}: {error}" if origin else str(error)) from None


def read_release_config(path: str | None) -> dict | None:
    """The cn_clip-style config.json given with ``--release_config``, None without one."""
    if path is None:
        return None
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise WeightMismatchError(f"{path}: line {error.lineno}: not a JSON release config ({error.msg})") from None


def release_towers(checkpoint: dict, release_config: str | None) -> dict:
    """The model_cfg of a release checkpoint's towers, with one line saying where it came from."""
    towers, how = release_architecture(checkpoint, read_release_config(release_config), release_config)
    logger.info("release checkpoint: architecture from %s", how)
    return towers


def _data_settings(trained: dict, origin: str) -> tuple[TrainedSetting, ...]:
    return tuple(TrainedSetting(f"data.{name}", trained[name], f"using {origin}'s {name} = {trained[name]}")
                 for name in TRAINED_INPUT_SETTINGS if trained.get(name) is not None)


@dataclass(frozen=True)
class ModelSource:
    """A model to start from or to embed with: what it is, the input settings it was trained with,
    how to build it."""

    path: str | None

    def trained_settings(self) -> tuple[TrainedSetting, ...]:
        return ()

    def state(self) -> dict | None:
        """The checkpoint dict a training run starts or resumes from."""
        return None

    def tokenizer_files(self) -> dict[str, str] | None:
        """The vocabulary a training run continues with (our checkpoints carry theirs)."""
        return None

    def vocabulary(self) -> str | None:
        """A vocabulary the weights were trained with, when the run must tokenise with it."""
        return None

    def training_architecture(self, cfg: Config, resuming: bool) -> ModelConfig | dict:
        """The model a training run builds to load these weights into."""
        return cfg.model

    def tokenizer(self, cfg: Config):
        """The tokenizer the weights were trained with."""
        raise NotImplementedError

    def architecture(self, cfg: Config) -> dict:
        """The stored architecture of the weights."""
        raise NotImplementedError

    def load(self, cfg: Config, is_main: bool = True):
        """(model, tokenizer) for the resolved ``cfg``, weights loaded strictly; how inputs are
        embedded (masks, fp16 frames) follows this run's configuration."""
        tokenizer = self.tokenizer(cfg)
        model = build_model(with_embedding_inputs(self.architecture(cfg), cfg.model), tokenizer, cfg.seed)
        load_weights(model, self.state(), self.path)
        logger.info("loaded %s", self.path)
        return model, tokenizer


@dataclass(frozen=True)
class UntrainedModel(ModelSource):
    """The model as training would start it, with the run's seed and tokenizer."""

    def load(self, cfg: Config, is_main: bool = True):
        tokenizer = build_tokenizer_for(cfg.data, cfg.model, cfg.run.output_dir,
                                        lambda: build_train_dataset(cfg.data).training_texts(), is_main)
        logger.info("evaluating the UNTRAINED model (seed %d)", cfg.seed)
        return build_model(cfg.model, tokenizer, cfg.seed), tokenizer


@dataclass(frozen=True)
class TrainingCheckpoint(ModelSource):
    """A ``.pth.tar`` written by our trainer."""

    checkpoint: dict

    def trained_settings(self) -> tuple[TrainedSetting, ...]:
        # "config" since the configuration redesign; older checkpoints kept the flat "args".
        trained = self.checkpoint.get("config", {}).get("data") or self.checkpoint.get("args", {})
        return _data_settings(trained, "the checkpoint")

    def state(self) -> dict:
        return self.checkpoint

    def tokenizer_files(self) -> dict[str, str] | None:
        return self.checkpoint.get("tokenizer_files") or None

    def training_architecture(self, cfg: Config, resuming: bool) -> ModelConfig | dict:
        # A resumed run keeps the stored architecture (so a run started from a hub backbone
        # resumes offline), embedding inputs as this run's compat says.
        if resuming and "model" in self.checkpoint and self.checkpoint.get("model_cfg"):
            return with_embedding_inputs(self.checkpoint["model_cfg"], cfg.model)
        return cfg.model

    def tokenizer(self, cfg: Config):
        files = self.tokenizer_files()
        if files:
            return restore_tokenizer(files, cfg.run.output_dir)
        return build_tokenizer(cfg.data.tokenizer or cfg.model.pretrained, None, None)

    def architecture(self, cfg: Config) -> dict:
        return self.checkpoint.get("model_cfg") or cfg.model.architecture()


@dataclass(frozen=True)
class ReleaseCheckpoint(ModelSource):
    """A checkpoint in the paper's release layout: evaluated as the original evaluates it."""

    checkpoint: dict

    def trained_settings(self) -> tuple[TrainedSetting, ...]:
        return (TrainedSetting("data.compat", "original",
                               f"{self.path} is a release-layout checkpoint: evaluating with --compat original "
                               "(give --compat default for this project's own evaluation inputs)"),)

    def state(self) -> dict:
        return self.checkpoint

    def vocabulary(self) -> str:
        # The release tokenises with the Chinese BERT vocabulary, shipped in the package.
        return CHINESE_BERT_VOCAB_DIR

    def training_architecture(self, cfg: Config, resuming: bool) -> dict:
        """Its towers with the run's other model options, for the run's image size."""
        towers = release_towers(self.checkpoint, cfg.run.release_config)
        size = towers["vision"]["image_size"]
        if size != cfg.data.image_size:
            raise WeightMismatchError(f"{self.path}: the release checkpoint's vision tower takes {size}-pixel "
                                      f"images, and this run's --image_size is {cfg.data.image_size}: "
                                      f"set --image_size {size}")
        return {**cfg.model.architecture(), **{name: towers[name] for name in RELEASE_TOWER_FIELDS},
                "timm_args": {}, "image_size": size}

    def tokenizer(self, cfg: Config):
        return build_tokenizer(cfg.data.tokenizer or self.vocabulary(), None, None)

    def architecture(self, cfg: Config) -> dict:
        return release_towers(self.checkpoint, cfg.run.release_config)


@dataclass(frozen=True)
class ExportedModel(ModelSource):
    """A folder (``model.safetensors`` + ``config.json`` [+ ``tokenizer/``]) or a ``.safetensors``
    file next to its ``config.json``."""

    model_cfg: dict
    weights: str
    tokenizer_dir: str | None

    def trained_settings(self) -> tuple[TrainedSetting, ...]:
        # The exported architecture names the frame count; the image size is the vision tower's.
        vision = self.model_cfg.get("vision")
        trained = {"clip_length": self.model_cfg.get("clip_length"),
                   "image_size": self.model_cfg.get("image_size")
                   or (vision.get("image_size") if isinstance(vision, dict) else None)}
        return _data_settings(trained, "the exported model")

    def state(self) -> dict:
        from safetensors.torch import load_file
        return {"model": load_file(self.weights)}

    def architecture(self, cfg: Config) -> dict:
        return self.model_cfg

    def tokenizer(self, cfg: Config):
        """Its ``tokenizer/`` folder, ``--tokenizer``, or the release's Chinese BERT vocabulary
        when the weights have exactly its size."""
        if self.tokenizer_dir:
            return load_saved_tokenizer(self.tokenizer_dir)
        if cfg.data.tokenizer:
            return build_tokenizer(cfg.data.tokenizer, None, None)
        from safetensors import safe_open
        with safe_open(self.weights, framework="pt") as handle:
            key = "text.encoder.embeddings.word_embeddings.weight"
            rows = handle.get_slice(key).get_shape()[0] if key in handle.keys() else None
        tokenizer = build_tokenizer(CHINESE_BERT_VOCAB_DIR, None, None)
        if rows is not None and rows != len(tokenizer):
            raise ConfigError(f"{self.weights}: the exported model has a vocabulary of {rows} tokens and no "
                              "tokenizer/ folder; pass tokenizer=PATH (the run's OUTPUT_DIR/tokenizer)")
        return tokenizer


def is_exported(path: str) -> bool:
    """A folder or ``.safetensors`` file written by ``python -m real20m.models.convert``."""
    return os.path.isdir(path) or str(path).endswith(".safetensors")


def _exported(path: str) -> ExportedModel:
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    weights = os.path.join(path, CONVERTED_WEIGHTS) if os.path.isdir(path) else path
    config = os.path.join(folder, CONVERTED_CONFIG)
    for needed in (weights, config):
        if not os.path.isfile(needed):
            raise FileNotFoundError(2, f"missing from the exported model {path}", needed)
    with open(config, encoding="utf-8") as handle:
        architecture = json.load(handle)
    tokenizer_dir = os.path.join(folder, "tokenizer")
    return ExportedModel(path, architecture, weights, tokenizer_dir if os.path.isdir(tokenizer_dir) else None)


def inspect_source(path: str | None) -> ModelSource:
    """The source at ``path`` (None or ``init``: the untrained model), read once."""
    if not path or path == UNTRAINED:
        return UntrainedModel(None)
    path = str(path)
    if is_exported(path):
        return _exported(path)
    checkpoint = load_checkpoint(path)
    if is_release_checkpoint(checkpoint):
        return ReleaseCheckpoint(path, checkpoint)
    return TrainingCheckpoint(path, checkpoint)
