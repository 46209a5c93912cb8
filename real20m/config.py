"""Configuration: defaults < YAML file < command line, resolved once into frozen sections.

Every option has one home, a dotted path ``section.field`` (``data.clip_length``,
``optim.lr_mult.text``). It can be set

* in a YAML file (``--config FILE.yaml`` or a packaged name, ``--config tiny``) under its section
  (``data: {clip_length: 8}``); a flat top-level key with an option's flag name
  (``clip_length: 8``) is accepted too, as older files wrote them;
* on the command line by its flag (``--clip_length 8``, the original release's names and short
  forms included) or by its dotted path (``--data.clip_length 8``, ``--model.text.hidden_size 32``:
  any value inside the architecture mappings, parsed as YAML).

``parse_config`` ends in ``resolve``, the one place that derives dependent values (frames per
clip and image size of the model from the data, title/query masking from ``compat``, no caption
decoder when its weight is 0, the checkpoint folder, the data paths under ``--data_root``). The
result is a frozen ``Config``; each builder receives only its section. ``Config.to_yaml()`` writes
the inputs (which ``--config`` reads back to the same ``Config``) and, for information, every
filled-in or derived value under ``derived:``.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable, Mapping

import yaml

from real20m.datasets.annotations import QUERY_LANGUAGES
from real20m.models.backbone_folder import BackboneFolderError, backbone_of_folder
from real20m.utils.entry import add_version_argument

logger = logging.getLogger(__name__)

SECTIONS = ("data", "model", "loss", "optim", "run")
COMPAT_MODES = ("default", "original")
LATEST = "latest"  # --resume latest
# Token lengths when not set: ours, and the original release's (queries 20 tokens, titles 90).
DEFAULT_TEXT_LENGTHS = {"max_query_len": 32, "max_title_len": 64}
ORIGINAL_TEXT_LENGTHS = {"max_query_len": 20, "max_title_len": 90}


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the option and its source."""


def str2bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("1", "true", "yes", "y", "on"):
        return True
    if value.lower() in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


class ConfigLoader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-12`` (no dot) as a string; configs mean the number, as YAML 1.2 does."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def yaml_value(text: str) -> Any:
    """A command-line value for a mapping entry (``--model.text.hidden_size 32``), read as YAML."""
    return yaml.load(text, Loader=ConfigLoader)


# --------------------------------------------------------------------------------- sections
# Field defaults are the project's defaults; help texts live in OPTIONS below.

@dataclass(frozen=True)
class DataConfig:
    data_root: str | None = None
    dataset_name: str = "Real400K"
    query_language: str = "zh"
    train_file: str | None = None
    test_file: str | None = None
    goods_img_root: str | None = None
    goods_text_root: str | None = None
    photo_img_root: str | None = None
    photo_text_root: str | None = None
    frameid_root: str | None = None
    cluster_file: str | None = None
    val_dir: str | None = None   # None: DATA_ROOT/val_file when it exists
    hard_sample: bool = False
    clip_length: int = 5
    image_size: int = 224
    max_query_len: int | None = None   # None: 32 (20 under compat original)
    max_title_len: int | None = None   # None: 64 (90 under compat original)
    text_aug: bool = True
    compat: str | None = None   # None: "original" to evaluate a release checkpoint, else "default"
    tokenizer: str | None = None
    vocab_size: int = 8000
    batch_size: int = 80
    workers: int = 4
    reduced_decode: bool = True
    gpu_decode: bool = False
    train_text: str = "default"
    train_transform: str = "default"
    item_pairs: bool = False   # derived: batches of (goods, video) pairs when loss.query_guidance is off


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "chinese_clip"
    pretrained: str | None = None
    text: Mapping = field(default_factory=dict)
    vision: Mapping = field(default_factory=dict)
    timm_name: str | None = None
    timm_args: Mapping = field(default_factory=dict)
    embed_dim: int = 512
    frame_heads: int = 8
    caption: Mapping | None = None
    gradient_checkpointing: bool = False
    frame_aggregation: str = "transformer"
    fusion: str = "attention"
    frame_init: str = "default"
    text_pooling: str | None = None     # None: the backbone's own (cls; eos for clip)
    frame_fp16: bool | None = None      # None: follows data.compat (the original's fp16 frames on CUDA)
    pixel_stats: str | None = None      # None: follows data.compat (imagenet under original, else backbone)
    # derived in resolve()
    clip_length: int = 5
    image_size: int = 224
    use_title_mask: bool = True
    use_query_mask: bool = True

    def architecture(self) -> dict:
        """The plain dict ``QCDModel`` is built from (a from-scratch vision tower gets the data's
        image size; a pretrained one keeps its own)."""
        arch = {name: copy.deepcopy(plain(getattr(self, name))) for name in (
            "backbone", "pretrained", "text", "vision", "timm_name", "timm_args", "embed_dim", "frame_heads", "caption",
            "gradient_checkpointing", "frame_aggregation", "fusion", "frame_init", "text_pooling", "frame_fp16",
            "clip_length", "use_title_mask", "use_query_mask", "pixel_stats")}
        if not self.pretrained and self.backbone != "timm":
            arch["vision"] = {**arch["vision"], "image_size": self.image_size}
        # The input size it is trained for, which a CNN tower's own config does not state.
        arch["image_size"] = self.image_size
        return arch


@dataclass(frozen=True)
class LossConfig:
    weights: Mapping = field(default_factory=dict)
    logit_scale: float = 20.0
    learnable_scale: bool = False
    local_negatives: bool = False
    query_guidance: bool = True
    log_terms: tuple = ()
    is_xbm: bool = False
    xbm_mode: str = "ours"
    xbm_size: int | None = None   # None: 4096 (ours), 10 x batch size (original)
    normalize_query: bool = True


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.01
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    momentum: float = 0.9
    epochs: int = 10
    max_steps: int = 0
    accum_freq: int = 1
    lr_schedule: str = "step"
    decay_epochs: int = 3
    lr_decay_rate: float = 0.1
    warmup_steps: int = 0
    clip_grad: float = 5.0
    clip_grad_mode: str = "global"
    grad_scaler: str = "default"
    lr_mult: Mapping = field(default_factory=dict)
    train_vision: bool = True
    mixed_precision_training: bool = False
    amp_dtype: str = "fp16"


@dataclass(frozen=True)
class RunConfig:
    output_dir: str = "outputs"
    checkpoints: str | None = None
    keep_checkpoints: int = 0
    resume: str | None = None
    init_weights: str | None = None
    release_config: str | None = None
    print_freq: int = 50
    save_freq: int = 0
    save_epoch_freq: int = 1
    save_interval_s: float = 0.0
    val_freq: int = 0
    start_epoch: int = 0
    start_step: int = 0
    dist_timeout: int = 1800
    hang_timeout: float = 600.0
    evaluate: bool = False
    legacy_text_features: bool = False
    feature_dtype: str = "float32"
    feature_partition_size: int = 65536


# Fields resolve() computes; they are not inputs (a YAML file or flag setting one is refused).
DERIVED = {"data": ("item_pairs",), "model": ("clip_length", "image_size", "use_title_mask", "use_query_mask")}
# Mappings whose entries are set one by one (``--optim.lr_mult.text``) and merged over the defaults.
MAPPING_FIELDS = {"model.text", "model.vision", "model.caption", "loss.weights", "optim.lr_mult"}


@dataclass(frozen=True)
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # The merged defaults + YAML + command line that resolve() started from (what to_yaml writes).
    inputs: Mapping = field(default_factory=dict, compare=False, repr=False)
    # What the command line's meaning decided (e.g. the backbone a weights folder holds), logged
    # once the run's logging is set up.
    notes: tuple = field(default=(), compare=False, repr=False)

    def to_dict(self) -> dict:
        """Every resolved value as plain containers (stored in checkpoints)."""
        values = {name: plain(dataclasses.asdict(getattr(self, name))) for name in SECTIONS}
        return {"seed": self.seed, **values}

    def to_yaml(self) -> str:
        """The inputs, which ``--config`` reads back to this same Config, and under ``derived:``
        (for information; ignored when read) every value resolve() filled in or derived."""
        inputs = plain(self.inputs)
        resolved = _flatten(self.to_dict())
        given = _flatten(inputs)
        derived = {path: value for path, value in resolved.items() if path not in given or given[path] != value}
        return yaml.safe_dump({**inputs, "derived": derived}, sort_keys=False, allow_unicode=True)


def _flatten(values: Mapping, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def plain(value: Any) -> Any:
    """Mappings and tuples as dicts and lists (what YAML, JSON and torch.save(weights_only) take)."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


# --------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Option:
    """One command-line option: where its value goes, how it is parsed, what it means."""

    path: str                       # "section.field" or "section.field.key" (inside a mapping)
    help: str
    flags: tuple[str, ...] = ()     # default: ("--<field>",)
    type: Callable | None = None
    choices: tuple | None = None
    bare: Any = None                # value of the bare flag (``--hard_sample`` = True)
    metavar: str | None = None

    @property
    def flag_names(self) -> tuple[str, ...]:
        return self.flags or (f"--{self.path.split('.')[-1]}",)


def _flag(path, help, *flags, **kwargs) -> Option:
    return Option(path, help, tuple(flags), **kwargs)


def _switch(path, help, *flags) -> Option:
    return Option(path, help, tuple(flags), type=str2bool, bare=True)


OPTIONS: tuple[Option, ...] = (
    # data
    _flag("data.data_root", "a Dataset/ folder in the Real400K layout; fills in every path not given"),
    _flag("data.dataset_name", "Real400K or Real20M (folder under data_root)"),
    _flag("data.query_language", "language of the queries and item texts: zh, or en for the release's English "
          "variant (the train file's 4th column, English query, and <pid>_eng.txt beside each <pid>.txt)",
          choices=tuple(QUERY_LANGUAGES)),
    _flag("data.train_file", "training annotations (query-grouped or one item a line)"),
    _flag("data.test_file", "items to embed with --evaluate (one item a line)"),
    _flag("data.goods_img_root", "goods images root"),
    _flag("data.goods_text_root", "goods text root"),
    _flag("data.photo_img_root", "video frames root"),
    _flag("data.photo_text_root", "video text root"),
    _flag("data.frameid_root", "optional frame lists <root>/<pid %% 50000>/<pid>.txt"),
    _flag("data.cluster_file", "query clusters for --hard_sample", "--cluster_file", "--cls_file"),
    _flag("data.val_dir", "validation split for --val_freq: a folder with video_queries.txt, goods_gallery.txt, "
          "eval_gt_video2goods.txt and eval_gt_goods2video.txt (default DATA_ROOT/val_file)"),
    _switch("data.hard_sample", "draw each batch within one query cluster"),
    _flag("data.clip_length", "frames per video (data loader and model)", type=int),
    _flag("data.image_size", "pixels of a frame's side after the transform (and of a from-scratch tower)",
          type=int),
    _flag("data.max_query_len", "query tokens kept (default 32; 20 under --compat original)", type=int),
    _flag("data.max_title_len", "title tokens kept (default 64; 90 under --compat original)", type=int),
    _switch("data.text_aug", "training text augmentation (field dropping, typo noise)"),
    _flag("data.train_text", "training text rules: default (ours) or original (its 6-line titles, 20%% "
          "position edits, each video field kept with p 0.8, null-with-newline kept)", choices=COMPAT_MODES),
    _flag("data.train_transform", "training images: default (RandomResizedCrop 0.64-1, flip per frame) or "
          "original (NEAREST squash, one flip per clip)", choices=COMPAT_MODES),
    _flag("data.compat", "'original' reproduces the release's evaluation inputs and masking (see README); "
          "default: 'original' when evaluating a release-layout checkpoint, else 'default'", choices=COMPAT_MODES),
    _flag("data.tokenizer", "tokenizer name or folder; default: the backbone's, the shipped Chinese BERT "
          "vocabulary under --compat original, else a WordPiece trained on the training text"),
    _flag("data.vocab_size", "size of a from-scratch WordPiece vocabulary", type=int),
    _flag("data.batch_size", "samples per process and step (per micro-batch with --accum_freq; and per "
          "evaluation batch)", "--batch_size", "-b",
          type=int),
    _flag("data.workers", "data loader worker processes", "--workers", "-j", type=int),
    _switch("data.reduced_decode", "decode JPEGs at the smallest DCT scale that still covers the output "
            "(a fraction of a full decode; off: full-size decoding; compat original always decodes full size)"),
    _switch("data.gpu_decode", "loader workers send JPEG bytes and the main process decodes and crops them "
            "on the device (nvjpeg on CUDA)"),
    # model
    _flag("model.backbone", "tower family: chinese_clip, clip or timm"),
    _flag("model.pretrained", "backbone weights: hub name or folder (timm: also a weights file for --timm_name; "
          "a .pth.tar file initialises the whole model instead, as the original --pretrained did)"),
    _flag("model.timm_name", "timm model name (backbone timm; not needed with a timm folder or hub name)"),
    _flag("model.timm_args", "constructor arguments of the timm model, e.g. '{channels: [16, 32, 64, 128]}' "
          "(replaces the configured ones as a whole: they belong to one model name)", type=yaml_value),
    _flag("model.embed_dim", "embedding size D", "--embedding_size", "--embed_dim", type=int),
    _flag("model.frame_heads", "attention heads of the frame transformer", type=int),
    _switch("model.gradient_checkpointing", "recompute tower activations in the backward pass"),
    _flag("model.frame_aggregation", "frames -> clip embedding (ablation: mean)", choices=("transformer", "mean")),
    _flag("model.fusion", "title + visual -> item embedding (ablations: one modality)",
          choices=("attention", "title_only", "visual_only")),
    _flag("model.text_pooling", "token states -> text feature: cls, eos or mean (default: the backbone's own, "
          "cls; eos for clip)", choices=("cls", "eos", "mean")),
    _flag("model.frame_init", "frame transformer initialisation (original: truncated normal 0.02)",
          choices=("default", "original")),
    _switch("model.frame_fp16", "run the frame transformer under fp16 autocast on CUDA "
            "(default: with --compat original)"),
    _flag("model.pixel_stats", "pixel mean/std: backbone (the pretrained backbone's image processor or timm data "
          "config; ImageNet's for a from-scratch tower) or imagenet (default: imagenet with --compat original, "
          "else backbone)", choices=("backbone", "imagenet")),
    # loss
    _flag("loss.weights", "weights of the objective's terms by name, e.g. '{itc: 0.5}'", "--loss_weights",
          type=yaml_value),
    _flag("loss.weights.consistency", "weight of mean((fused - visual)^2)", "--delta", "--delta_factor",
          type=float),
    _flag("loss.logit_scale", "contrastive logit scale (temperature 1/scale)", type=float),
    _switch("loss.learnable_scale", "learn the logit scale"),
    _switch("loss.local_negatives", "in-batch negatives on each rank (the original) instead of gathering "
            "them from every rank"),
    _switch("loss.query_guidance", "query-guided objective; false: the ablation that contrasts a goods item "
            "directly with a video of the same query (the pair term) and nothing else"),
    _flag("loss.log_terms", "terms computed and logged but left out of the total, e.g. '[itc]'", type=yaml_value),
    _switch("loss.is_xbm", "cross-batch memory of past embeddings as extra negatives"),
    _flag("loss.xbm_mode", "ours (gathered pairs as extra negatives) or original (the release's per-rank bank)",
          choices=("ours", "original")),
    _flag("loss.xbm_size", "rows of the cross-batch memory (default 4096; original: 10 x batch size)", type=int),
    _switch("loss.normalize_query", "score the unit query embedding (false: the original's raw query projection, "
            "whose norm multiplies the logit scale)"),
    # optimisation
    _flag("optim.lr", "base learning rate", "--lr", "--learning_rate", type=float),
    _flag("optim.optimizer", "adamw, adam or sgd", choices=("adamw", "adam", "sgd")),
    _flag("optim.weight_decay", "weight decay", "--weight_decay", "--wd", type=float),
    _flag("optim.momentum", "SGD momentum", type=float),
    _flag("optim.epochs", "epochs to train", type=int),
    _flag("optim.max_steps", "stop after this many steps (0: no limit)", type=int),
    _flag("optim.accum_freq", "micro-batches of --batch_size per optimizer step: gradient accumulation "
          "that keeps the negatives of all of them (steps, epochs and --max_steps count optimizer steps)",
          type=int),
    _flag("optim.lr_schedule", "step (decay every --decay_epochs) or cosine (with warm-up)",
          choices=("step", "cosine")),
    _flag("optim.decay_epochs", "epochs between step decays", type=int),
    _flag("optim.lr_decay_rate", "factor of each step decay", type=float),
    _flag("optim.warmup_steps", "linear warm-up steps of the cosine schedule", type=int),
    _flag("optim.clip_grad", "gradient norm clip (0: off)", type=float),
    _flag("optim.clip_grad_mode", "global: one norm over every parameter; per_tower: the text and the vision "
          "tower each clipped on its own, the rest unclipped (the original)", choices=("global", "per_tower")),
    _flag("optim.grad_scaler", "fp16 grad scaler: default (PyTorch's), or original (initial scale = batch "
          "size, at most 128 x batch size, growth every 100 steps)", choices=("default", "original")),
    _flag("optim.lr_mult", "per-module LR multipliers, e.g. '{vision: 0.001}'", "--lr_mult", type=yaml_value),
    _flag("optim.lr_mult.text", "LR multiplier of the text tower", "--text_lr_factor", type=float),
    _flag("optim.lr_mult.vision", "LR multiplier of the vision tower", "--image_lr_factor", type=float),
    _flag("optim.lr_mult.fusion", "LR multiplier of the attention pooling", "--fusion_lr_factor", type=float),
    _flag("optim.lr_mult.frame", "LR multiplier of the frame transformer", "--video_fusion_factor", type=float),
    _flag("optim.lr_mult.caption", "LR multiplier of the caption decoder", "--text_generation_factor",
          type=float),
    _switch("optim.train_vision", "train the vision tower (false: frozen)"),
    _switch("optim.mixed_precision_training", "AMP on CUDA (fp16 with a grad scaler, or bf16)"),
    _flag("optim.amp_dtype", "AMP dtype", choices=("fp16", "bf16")),
    # run
    _flag("run.output_dir", "run folder: config.yaml, log.txt, tensorboard/, checkpoints/, features"),
    _flag("run.checkpoints", "checkpoint folder (default OUTPUT_DIR/checkpoints)"),
    _flag("run.keep_checkpoints", "keep the newest N numbered checkpoints (0: all)", type=int),
    _flag("run.resume", "checkpoint to continue from (ours or the release's); 'latest': the newest one in the "
          "checkpoint folder, or a fresh start when there is none (pre-emptible jobs); 'init': untrained model"),
    _flag("run.init_weights", "initialise the weights from a checkpoint and restart the schedule"),
    _flag("run.release_config", "cn_clip-style config.json of a release checkpoint (default: ViT-B/16)"),
    _flag("run.print_freq", "log every N steps", "--print_freq", "-p", type=int),
    _flag("run.save_freq", "also save every N steps (0: end of epoch only)", "--save_freq", "-s", type=int),
    _flag("run.save_epoch_freq", "save at the end of every N-th epoch (0: only by --save_interval_s); the "
          "last epoch is always saved", type=int),
    _flag("run.save_interval_s", "also save at the end of an epoch when this many seconds have passed since "
          "the last save (0: off)", type=float),
    _flag("run.val_freq", "every N epochs (and after the last) compute video->goods and goods->video Recall@K "
          "on the validation split (--val_dir), log it and keep the best model as best.pth.tar (0: off)",
          "--val_freq", "--val-frequency", type=int),
    _flag("run.start_epoch", "epoch counter of a fresh run (a resumed run takes the checkpoint's)", type=int),
    _flag("run.start_step", "global step of a fresh run (a resumed run takes the checkpoint's)",
          "--global_step", "--start_step", type=int),
    _flag("run.dist_timeout", "seconds before a stuck collective fails", type=int),
    _flag("run.hang_timeout", "seconds a training process may go without progress (a step, a phase of one, a "
          "save) before it names its rank, phase and last step and exits non-zero, so that the job restarts "
          "(MAX_RESTARTS) or ends; long enough for a first step and a save, well below --dist_timeout (0: off)",
          type=float),
    _switch("run.evaluate", "write the features of --test_file instead of training"),
    _switch("run.legacy_text_features", "also write OUTPUT_DIR/features.feat in the original text format"),
    _flag("run.feature_dtype", "dtype of feature shards", choices=("float32", "float16")),
    _flag("run.feature_partition_size", "items per feature partition file: extraction holds one partition in "
          "memory and a rerun continues after the last complete one", type=int),
)

# The original parsed these and never used them; they are accepted with one warning.
UNUSED_ORIGINAL_FLAGS = {
    "--sample_info_file": "PATH", "--cls_num": "N", "--train_file_part_num": "N",
    "--using_other_transforms": None, "--evaluate_live2goods": None, "--evaluate_query2goods_query": None,
    "--evaluate_query2goods_goods": None, "--evaluate_goods2caption": None,
}
LIVE_FLAGS = ("--live_img_root", "--live_text_root")


# --------------------------------------------------------------------------------- parsing


def _defaults() -> dict:
    """Nested dict of the section defaults (plain values), derived fields left out."""
    values = Config().to_dict()
    for section, names in DERIVED.items():
        for name in names:
            values[section].pop(name)
    return values


def _default_of(path: str) -> Any:
    value: Any = _defaults()
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train the QCD cross-domain embedding model, or (--evaluate) write item features. "
                    "Any option can also be given by its dotted path, e.g. --data.clip_length 8 or "
                    "--model.text.hidden_size 32 (values inside model.text/vision/caption are read as YAML).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", default=None,
                        help="YAML file, or the name of a packaged config (tiny, paper); flags override it")
    add_version_argument(parser)
    parser.add_argument("--seed", type=int, help="seed of every random stream (default: 0)")
    parser.add_argument("--print_config", action="store_true", default=False,
                        help="print the resolved configuration as YAML and exit (reads no data)")
    parser.add_argument("--finetune", nargs="?", const=True, default=None, metavar="PATH",
                        help="bare: train the vision tower (the original's meaning); with a PATH: "
                             "initialise the weights from that checkpoint")
    parser.add_argument("--local_rank", type=int, default=None,
                        help="accepted from torch.distributed.launch; the LOCAL_RANK variable is used")
    groups = {name: parser.add_argument_group(name) for name in SECTIONS}
    for option in OPTIONS:
        kwargs: dict[str, Any] = {"dest": option.path, "help": f"{option.help} [{option.path}]",
                                  "default": argparse.SUPPRESS}
        default = _default_of(option.path)
        if default is not None and default != {}:
            kwargs["help"] += f" (default: {default})"
        if option.type is not None:
            kwargs["type"] = option.type
        if option.choices:
            kwargs["choices"] = option.choices
        if option.bare is not None:
            kwargs.update(nargs="?", const=option.bare, metavar="BOOL")
        elif option.choices is None:
            kwargs["metavar"] = option.metavar or option.path.split(".")[-1].upper()
        groups[option.path.split(".")[0]].add_argument(*option.flag_names, **kwargs)
    original = parser.add_argument_group("original flags without effect (accepted, with a warning)")
    for flag, metavar in UNUSED_ORIGINAL_FLAGS.items():
        if metavar is None:
            original.add_argument(flag, action="store_true", dest=f"unused:{flag}", help="no effect")
        else:
            original.add_argument(flag, metavar=metavar, dest=f"unused:{flag}", help="no effect")
    for flag in LIVE_FLAGS:
        original.add_argument(flag, metavar="PATH", dest=f"live:{flag}",
                              help="live-stream source: not supported (the release has no live data)")
    return parser


def _split_dotted(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separate ``--section.path VALUE`` / ``--section.path=VALUE`` from the flags argparse knows."""
    flags = {name for option in OPTIONS for name in option.flag_names}
    rest, dotted = [], []
    index = 0
    while index < len(argv):
        token = argv[index]
        name, has_value, value = token.partition("=")
        if name.startswith("--") and "." in name and name not in flags and name[2:].split(".")[0] in SECTIONS:
            if not has_value:
                if index + 1 >= len(argv):
                    raise ConfigError(f"{name}: expected a value")
                value = argv[index + 1]
                index += 1
            dotted.append((name[2:], value))
        else:
            rest.append(token)
        index += 1
    return rest, dotted


def _set_path(values: dict, path: str, value: Any, source: str) -> None:
    """Put ``value`` at dotted ``path``; a mapping value merges into a mapping option."""
    parts = path.split(".")
    section = parts[0]
    if section not in SECTIONS:
        raise ConfigError(f"{source}: unknown section {section!r} in {path!r} (sections: {', '.join(SECTIONS)})")
    if len(parts) < 2:
        raise ConfigError(f"{source}: {path!r} names a section, not an option")
    name = parts[1]
    if name in DERIVED.get(section, ()):
        raise ConfigError(f"{source}: {path} is derived, not set: " + _DERIVED_FROM[f"{section}.{name}"])
    if name not in values[section]:
        raise ConfigError(f"{source}: unknown option {section}.{name}")
    if len(parts) == 2:
        if f"{section}.{name}" in MAPPING_FIELDS and isinstance(value, Mapping) \
                and isinstance(values[section][name], dict):
            values[section][name] = {**values[section][name], **plain(value)}
        else:
            values[section][name] = plain(value)
        return
    if f"{section}.{name}" not in MAPPING_FIELDS:
        raise ConfigError(f"{source}: {section}.{name} is not a mapping, so {path!r} cannot be set")
    target = values[section]
    for part in parts[1:-1]:
        if target.get(part) is None:
            target[part] = {}
        if not isinstance(target[part], dict):
            raise ConfigError(f"{source}: {path!r}: {part} is not a mapping")
        target = target[part]
    target[parts[-1]] = plain(value)


_DERIVED_FROM = {
    "model.clip_length": "frames per clip is data.clip_length (--clip_length)",
    "model.image_size": "the image size is data.image_size (--image_size)",
    "model.use_title_mask": "title masking follows data.compat",
    "model.use_query_mask": "query masking follows data.compat",
    "data.item_pairs": "item-pair batches follow loss.query_guidance",
}
_FLAT_NAMES = {name.lstrip("-"): option.path for option in OPTIONS for name in option.flag_names
               if name.startswith("--")}


def _yaml_values(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        try:
            content = yaml.load(handle, Loader=ConfigLoader) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            raise ConfigError(f"{path}: {where}not valid YAML ({getattr(error, 'problem', None) or error})") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of sections or option names to values")
    return content


def _apply_yaml(values: dict, path: str) -> None:
    """Sections (``data: {...}``) or flat option names (``clip_length: 8``); ``derived`` is ignored."""
    content = _yaml_values(path)
    for key, value in content.items():
        if key == "derived":
            continue  # written by to_yaml() for information; resolve() computes it again
        if key == "seed":
            values["seed"] = value
        elif key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: section {key} must be a mapping")
            for name, item in value.items():
                _set_path(values, f"{key}.{name}", item, path)
        elif key in _FLAT_NAMES:
            _set_path(values, _FLAT_NAMES[key], value, path)
        else:
            raise ConfigError(f"{path}: unknown option(s) {key}")


def config_path(name: str) -> str:
    """A YAML path, or the name of a config shipped in the package (``tiny`` -> real20m/configs/tiny.yaml)."""
    if os.path.isfile(name):
        return name
    packaged = resources.files("real20m") / "configs" / f"{name}.yaml"
    if packaged.is_file() and not name.endswith((".yaml", ".yml")):
        return str(packaged)
    shipped = ", ".join(sorted(entry.name[:-len(".yaml")] for entry in (resources.files("real20m") / "configs").iterdir()
                               if entry.name.endswith(".yaml")))
    raise ConfigError(f"{name}: no such config file (give a YAML file, or a packaged config: {shipped})")


def parse_config(argv: list[str] | None = None) -> Config:
    """Parse ``argv`` (default sys.argv[1:]) on top of the YAML file named by ``--config``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, dotted = _split_dotted(argv)
    args = vars(build_parser().parse_args(rest))
    values = _defaults()
    values["seed"] = 0
    if args.get("config"):
        _apply_yaml(values, config_path(args["config"]))
    if "seed" in args:
        values["seed"] = args["seed"]
    for option in OPTIONS:  # in table order, so "--lr_mult {...}" merges before "--text_lr_factor"
        if option.path in args:
            _set_path(values, option.path, args[option.path], "command line")
    for path, text in dotted:
        _set_path(values, path, yaml_value(text), "command line")
    notes = _apply_original_flags(values, args)
    notes += _select_folder_backbone(values, explicit_backbone="model.backbone" in args
                                     or any(path == "model.backbone" for path, _ in dotted))
    config = dataclasses.replace(resolve(values), notes=tuple(notes))
    if args.get("print_config"):
        sys.stdout.write(config.to_yaml())
        raise SystemExit(0)
    return config


def _apply_original_flags(values: dict, args: dict) -> list[str]:
    """Flags whose meaning depends on their value, and flags of the original without effect;
    returns what their values decided."""
    notes = []
    finetune = args.get("finetune")
    if finetune is True:
        values["optim"]["train_vision"] = True
    elif finetune:
        values["run"]["init_weights"] = finetune
    pretrained = values["model"]["pretrained"]
    if isinstance(pretrained, str) and _is_training_checkpoint(pretrained, values["model"]["backbone"]):
        # The original's --pretrained names a whole-model checkpoint (the released pretrain.pth.tar).
        values["model"]["pretrained"] = None
        values["run"]["init_weights"] = values["run"]["init_weights"] or pretrained
        notes.append(f"--pretrained {pretrained} is a whole-model checkpoint: it initialises the weights")
    for flag in LIVE_FLAGS:
        if args.get(f"live:{flag}") is not None:
            raise ConfigError(f"{flag}: the live-stream source is not supported (the release has no live data)")
    for flag in UNUSED_ORIGINAL_FLAGS:
        if args.get(f"unused:{flag}") not in (None, False):
            logger.warning("%s has no effect (the original parsed it and never used it either)", flag)
    return notes


def _select_folder_backbone(values: dict, explicit_backbone: bool) -> list[str]:
    """A local backbone folder selects the backbone its config.json names, unless --backbone is
    given (then the two must agree). A timm folder names its own architecture, so a configured
    timm_name / timm_args (the tiny config's from-scratch CNN) give way to it."""
    model = values["model"]
    folder = model["pretrained"]
    if not isinstance(folder, str) or not os.path.isdir(folder):
        return []
    try:
        found = backbone_of_folder(folder)
    except BackboneFolderError as error:
        raise ConfigError(f"model.pretrained: {error}") from None
    if explicit_backbone and model["backbone"] != found:
        raise ConfigError(f"model.pretrained {folder} holds a {found} model (its config.json), but --backbone is "
                          f"{model['backbone']}: leave --backbone out, or give a {model['backbone']} folder")
    note = f"backbone {found}, read from {os.path.join(folder, 'config.json')}"
    if found == "timm" and (model["timm_name"] or model["timm_args"]):
        note += f" (the folder's architecture replaces timm_name {model['timm_name']} and its timm_args)"
        model["timm_name"], model["timm_args"] = None, {}
    model["backbone"] = found
    return [note]


def _is_training_checkpoint(path: str, backbone: str) -> bool:
    if path.endswith(".pth.tar"):
        return True
    return backbone != "timm" and os.path.isfile(path)


# --------------------------------------------------------------------------------- resolve


def resolve(values: dict) -> Config:
    """Check the merged inputs and derive every dependent value; returns the frozen Config."""
    inputs = copy.deepcopy(values)
    values = copy.deepcopy(values)
    data, model, loss, optim, run = (values[name] for name in SECTIONS)
    _resolve_run(run)
    _resolve_data(data, loss, run)
    _check_lr_mult(optim["lr_mult"])
    if not isinstance(optim["accum_freq"], int) or optim["accum_freq"] < 1:
        raise ConfigError(f"optim.accum_freq must be a positive integer, got {optim['accum_freq']!r}")
    weights = _resolve_weights(loss, model)
    masked = data["compat"] != "original"
    derived_model = {
        "clip_length": data["clip_length"],
        "image_size": data["image_size"],
        "use_title_mask": masked,
        "use_query_mask": masked,
        "frame_fp16": (not masked) if model["frame_fp16"] is None else model["frame_fp16"],
        "pixel_stats": model["pixel_stats"] or ("backbone" if masked else "imagenet"),
        # A decoder whose loss has weight 0 never gets a gradient (DDP refuses such parameters).
        "caption": model["caption"] if weights.get("caption", 0) else None,
    }
    if loss["xbm_size"] is None:
        # The original's bank holds 10 of its steps' batches (N x B samples with accumulation).
        step_batch = data["batch_size"] * optim["accum_freq"]
        loss["xbm_size"] = 10 * step_batch if loss["xbm_mode"] == "original" else 4096
    return Config(
        seed=int(values["seed"]),
        data=DataConfig(**data),
        model=ModelConfig(**{**model, **derived_model}),
        loss=LossConfig(**{**loss, "weights": weights}),
        optim=OptimConfig(**{**optim, "lr_mult": {**default_lr_mult(), **optim["lr_mult"]}}),
        run=RunConfig(**run),
        inputs=inputs,
    )


def _resolve_run(run: dict) -> None:
    if run["checkpoints"] is None:
        run["checkpoints"] = os.path.join(run["output_dir"], "checkpoints")
    if run["resume"] == LATEST:
        run["resume"] = _latest_checkpoint(run["checkpoints"])


def _resolve_data(data: dict, loss: dict, run: dict) -> None:
    """Paths under data_root, compat (from the checkpoint to evaluate), text lengths, item pairs."""
    _fill_data_paths(data)
    if run["val_freq"] and not run["evaluate"]:
        _check_validation_split(data["val_dir"])
    if data["compat"] is None:
        data["compat"] = _compat_for(run)
    if data["compat"] not in COMPAT_MODES:
        raise ConfigError(f"data.compat must be one of {COMPAT_MODES}, got {data['compat']!r}")
    lengths = ORIGINAL_TEXT_LENGTHS if data["compat"] == "original" else DEFAULT_TEXT_LENGTHS
    for name, length in lengths.items():
        if data[name] is None:
            data[name] = length
    for name in ("clip_length", "image_size", "batch_size", "max_query_len", "max_title_len"):
        if not isinstance(data[name], int) or data[name] < 1:
            raise ConfigError(f"data.{name} must be a positive integer, got {data[name]!r}")
    data["item_pairs"] = not loss["query_guidance"]


def _resolve_weights(loss: dict, model: dict) -> dict[str, float]:
    """Every term's weight: the defaults, the inputs, and what the other options imply."""
    loss["log_terms"] = tuple(loss["log_terms"] or ())
    _check_weights(loss["weights"], loss["log_terms"])
    weights = {**default_loss_weights(), **loss["weights"]}
    if not loss["query_guidance"]:
        # The baseline without query guidance: item-item contrast only.
        weights = {name: 0.0 for name in weights} | {"pair": loss["weights"].get("pair", 1.0)}
    if model["caption"] is None:
        weights["caption"] = 0.0  # no decoder configured: no caption term
    return weights


def _latest_checkpoint(folder: str) -> str | None:
    from real20m.engine.checkpoint import CheckpointManager
    latest = CheckpointManager(folder).latest()
    logger.warning("--resume latest: %s", f"continuing from {latest}" if latest else
                   f"no checkpoint in {folder}, starting fresh")
    return str(latest) if latest else None


def _compat_for(run: dict) -> str:
    """Evaluating a checkpoint in the release layout reproduces the original unless told otherwise."""
    resume = run["resume"]
    if not run["evaluate"] or not resume or not os.path.isfile(resume):
        return "default"
    from real20m.engine.checkpoint import checkpoint_keys
    from real20m.models.release_layout import WEIGHT_SECTIONS
    if set(WEIGHT_SECTIONS) <= checkpoint_keys(resume):
        logger.warning("%s is a release-layout checkpoint: evaluating with --compat original "
                       "(give --compat default for this project's own evaluation inputs)", resume)
        return "original"
    return "default"


def default_loss_weights() -> dict[str, float]:
    from real20m.losses.terms import default_weights
    return default_weights()


def default_lr_mult() -> dict[str, float]:
    from real20m.engine.optim import DEFAULT_LR_MULT
    return dict(DEFAULT_LR_MULT)


def _check_weights(weights: Mapping, log_terms) -> None:
    from real20m.losses.terms import TERMS
    unknown = sorted((set(weights) | set(log_terms or ())) - set(TERMS))
    if unknown:
        raise ConfigError(f"loss.weights: unknown term(s) {unknown}; known: {sorted(TERMS)}")


def _check_lr_mult(lr_mult: Mapping) -> None:
    unknown = sorted(set(lr_mult) - set(default_lr_mult()))
    if unknown:
        raise ConfigError(f"optim.lr_mult: unknown group(s) {unknown}; known: {sorted(default_lr_mult())}")


VALIDATION_FILES = ("video_queries.txt", "goods_gallery.txt", "eval_gt_video2goods.txt", "eval_gt_goods2video.txt")


def _check_validation_split(val_dir: str | None) -> None:
    if not val_dir:
        raise ConfigError("run.val_freq needs a validation split: set data.val_dir (or data.data_root)")
    missing = [name for name in VALIDATION_FILES if not os.path.isfile(os.path.join(val_dir, name))]
    if missing:
        raise ConfigError(f"{val_dir}: run.val_freq needs the validation files {', '.join(missing)}")


def _fill_data_paths(data: dict) -> None:
    """With data_root, every path left unset points into the standard Real400K/Real20M layout."""
    if not data["data_root"]:
        return
    dataset = os.path.join(data["data_root"], data["dataset_name"])
    layout = {
        "goods_img_root": os.path.join(dataset, "goods", "images"),
        "goods_text_root": os.path.join(dataset, "goods", "text"),
        "photo_img_root": os.path.join(dataset, "video", "images"),
        "photo_text_root": os.path.join(dataset, "video", "text"),
        "train_file": os.path.join(data["data_root"], "train_file", "train.txt"),
    }
    cluster = os.path.join(data["data_root"], "train_file", "cluster.txt")
    if data["hard_sample"] and os.path.exists(cluster):
        layout["cluster_file"] = cluster
    layout["val_dir"] = os.path.join(data["data_root"], "val_file")
    for name, path in layout.items():
        if data[name] is None:
            data[name] = path


def override(config: Config, changes: Mapping[str, Any], source: str) -> Config:
    """A new Config resolved from ``config``'s inputs with ``changes`` ({dotted path: value}) on top,
    e.g. the input settings a checkpoint was trained with; ``source`` names them in errors."""
    inputs = copy.deepcopy(plain(config.inputs))
    for path, value in changes.items():
        _set_path(inputs, path, value, source)
    return resolve(inputs)


def log_configuration_notes(config: Config) -> None:
    for note in config.notes:
        logger.info("configuration: %s", note)


def write_config(config: Config, output_dir: str) -> str:
    """``OUTPUT_DIR/config.yaml`` (written atomically: a crash never leaves half a file)."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "config.yaml")
    temp = f"{path}.{os.getpid()}.tmp"
    with open(temp, "w", encoding="utf-8") as handle:
        handle.write(config.to_yaml())
    os.replace(temp, path)
    return path
