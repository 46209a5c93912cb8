"""The configuration's schema: five frozen sections of typed fields whose defaults are the
project's defaults, and the resolved ``Config`` that holds them. A field that is a command-line
option carries its help text and flags as field metadata; ``options.OPTIONS`` is read from them."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import yaml

from real20m.config.value_types import str2bool, yaml_value
from real20m.datasets.annotations import QUERY_LANGUAGES
from real20m.errors import InputError
from real20m.models.architecture_defaults import ARCHITECTURE_DEFAULTS
from real20m.models.backbones import DEFAULT_BACKBONE, backbone_names, get_backbone
from real20m.models.component_registry import FRAME_AGGREGATIONS, FUSIONS

SECTIONS = ("data", "model", "loss", "optim", "run")
COMPAT_MODES = ("default", "original")
LATEST = "latest"  # --resume latest


class ConfigError(InputError, ValueError):
    """A configuration value that cannot be used; the message names the option and its source."""


def option_field(default: Any, help: str, *flags: str, parse: Callable | None = None,
           choices: tuple | Callable[[], tuple] | None = None, factory: Callable | None = None) -> Any:
    """A field set by a command-line option: its help text, its flags (none given: ``--<field>``),
    the function that reads its text, its choices (a callable: a registry's keys when parsing);
    a mutable default comes from ``factory``."""
    metadata = {"help": help, "flags": flags, "type": parse, "choices": choices, "bare": None}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def switch_field(default: bool | None, help: str, *flags: str) -> Any:
    """A boolean field whose bare flag means true (``--hard_sample``); ``--flag false`` sets it off."""
    return field(default=default, metadata={"help": help, "flags": flags, "type": str2bool, "choices": None,
                                            "bare": True})


@dataclass(frozen=True)
class DataConfig:
    data_root: str | None = option_field(
        None, "a Dataset/ folder in the Real400K layout; fills in every path not given")
    dataset_name: str = option_field("Real400K", "Real400K or Real20M (folder under data_root)")
    query_language: str = option_field(
        "zh", "language of the queries and item texts: zh, or en for the release's English variant (the train "
        "file's 4th column, English query, and <pid>_eng.txt beside each <pid>.txt)", choices=tuple(QUERY_LANGUAGES))
    train_file: str | None = option_field(None, "training annotations (query-grouped or one item a line)")
    test_file: str | None = option_field(None, "items to embed with --evaluate (one item a line)")
    goods_img_root: str | None = option_field(None, "goods images root")
    goods_text_root: str | None = option_field(None, "goods text root")
    photo_img_root: str | None = option_field(None, "video frames root")
    photo_text_root: str | None = option_field(None, "video text root")
    frameid_root: str | None = option_field(None, "optional frame lists <root>/<pid %% 50000>/<pid>.txt")
    cluster_file: str | None = option_field(
        None, "query clusters (query, category, cluster, query) for --hard_sample and the goods-category term "
        "(default DATA_ROOT/train_file/cluster.txt)", "--cluster_file", "--cls_file")
    val_dir: str | None = option_field(
        None, "validation split for --val_freq: a folder with video_queries.txt, goods_gallery.txt, "
        "eval_gt_video2goods.txt and eval_gt_goods2video.txt (default DATA_ROOT/val_file)")
    hard_sample: bool = switch_field(False, "draw each batch within one query cluster")
    clip_length: int = option_field(5, "frames per video (data loader and model)", parse=int)
    image_size: int = option_field(224, "pixels of a frame's side after the transform (and of a from-scratch tower)",
                                   parse=int)
    max_query_len: int | None = option_field(None, "query tokens kept (default 32; 20 under --compat original)",
                                             parse=int)
    max_title_len: int | None = option_field(None, "title tokens kept (default 64; 90 under --compat original)",
                                             parse=int)
    text_aug: bool = switch_field(True, "training text augmentation (field dropping, typo noise)")
    compat: str | None = option_field(
        None, "'original' reproduces the release's evaluation inputs and masking (see README); default: "
        "'original' when evaluating a release-layout checkpoint, else 'default'", choices=COMPAT_MODES)
    tokenizer: str | None = option_field(
        None, "tokenizer name or folder; default: the backbone's, the shipped Chinese BERT vocabulary under "
        "--compat original, else a WordPiece trained on the training text")
    vocab_size: int = option_field(8000, "size of a from-scratch WordPiece vocabulary", parse=int)
    batch_size: int = option_field(80, "samples per process and step (per micro-batch with --accum_freq; and per "
                                   "evaluation batch)", "--batch_size", "-b", parse=int)
    workers: int = option_field(4, "data loader worker processes", "--workers", "-j", parse=int)
    reduced_decode: bool = switch_field(
        True, "decode JPEGs at the smallest DCT scale that still covers the output (a fraction of a full decode; "
        "off: full-size decoding; compat original always decodes full size)")
    gpu_decode: bool = switch_field(False, "loader workers send JPEG bytes and the main process decodes and crops them "
                                    "on the device (nvjpeg on CUDA)")
    train_text: str = option_field(
        "default", "training text rules: default (ours) or original (its 6-line titles, 20%% position edits, "
        "each video field kept with p 0.8, null-with-newline kept)", choices=COMPAT_MODES)
    train_transform: str = option_field(
        "default", "training images: default (RandomResizedCrop 0.64-1, flip per frame) or original (NEAREST "
        "squash, one flip per clip)", choices=COMPAT_MODES)
    item_pairs: bool = False   # derived: batches of (goods, video) pairs when loss.query_guidance is off
    step_batch_size: int = 0   # derived: samples of one optimizer step, batch_size x optim.accum_freq
    category_labels: bool = False  # derived: batches carry goods-category classes (a weighted term reads them)
    category_names: tuple = ()     # derived: the category vocabulary of the cluster file; a class is a position


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = option_field(DEFAULT_BACKBONE, "tower family (a registered backbone)", choices=backbone_names)
    pretrained: str | None = option_field(
        None, "backbone weights: hub name or folder (timm: also a weights file for --timm_name; a .pth.tar file "
        "initialises the whole model instead, as the original --pretrained did)")
    text: Mapping = field(default_factory=dict)
    vision: Mapping = field(default_factory=dict)
    timm_name: str | None = option_field(None, "timm model name (backbone timm; not needed with a timm folder or hub "
                                         "name)")
    timm_args: Mapping = option_field(
        None, "constructor arguments of the timm model, e.g. '{channels: [16, 32, 64, 128]}' (replaces the "
        "configured ones as a whole: they belong to one model name)", parse=yaml_value, factory=dict)
    embed_dim: int = option_field(512, "embedding size D", "--embedding_size", "--embed_dim", parse=int)
    frame_heads: int = option_field(ARCHITECTURE_DEFAULTS["frame_heads"], "attention heads of the frame transformer",
                                    parse=int)
    caption: Mapping | None = None
    gradient_checkpointing: bool = switch_field(ARCHITECTURE_DEFAULTS["gradient_checkpointing"],
                                                "recompute tower activations in the backward pass")
    frame_aggregation: str = option_field(ARCHITECTURE_DEFAULTS["frame_aggregation"],
                                          "frames -> clip embedding (ablation: mean; X-CLIP's: xclip)",
                                          choices=FRAME_AGGREGATIONS.names)
    fusion: str = option_field(ARCHITECTURE_DEFAULTS["fusion"],
                               "title + visual -> item embedding (ablations: one modality; CLIP4Cir's: combiner)",
                               choices=FUSIONS.names)
    frame_init: str = option_field(ARCHITECTURE_DEFAULTS["frame_init"],
                                   "frame transformer initialisation (original: truncated normal 0.02)",
                                   choices=("default", "original"))
    text_pooling: str | None = option_field(
        None, "token states -> text feature: cls, eos or mean (default: the backbone's own, cls; eos for clip)",
        choices=("cls", "eos", "mean"))
    frame_fp16: bool | None = switch_field(None, "run the frame transformer under fp16 autocast on CUDA (default: with "
                                           "--compat original)")
    pixel_stats: str | None = option_field(
        None, "pixel mean/std: backbone (the pretrained backbone's image processor or timm data config; "
        "ImageNet's for a from-scratch tower) or imagenet (default: imagenet with --compat original, else "
        "backbone)", choices=("backbone", "imagenet"))
    momentum: float = option_field(
        0.995, "EMA coefficient m of the momentum encoder (ALBEF's 0.995): after each optimizer step its weights "
        "become m x theirs + (1 - m) x the model's; the encoder is built only when a weighted loss term reads its "
        "momentum_* outputs (albef_itc)", "--model.momentum", parse=float)
    # derived in resolve()
    momentum_encoder: bool = False   # whether a computed loss term reads the momentum encoder's outputs
    clip_length: int = ARCHITECTURE_DEFAULTS["clip_length"]
    image_size: int = 224
    use_title_mask: bool = ARCHITECTURE_DEFAULTS["use_title_mask"]
    use_query_mask: bool = ARCHITECTURE_DEFAULTS["use_query_mask"]
    category_classes: int = ARCHITECTURE_DEFAULTS["category_classes"]  # the category head's outputs (0: none)

    def architecture(self) -> dict:
        """The plain dict ``QCDModel`` is built from (a from-scratch vision tower gets the data's
        image size; a pretrained one keeps its own)."""
        arch = {name: copy.deepcopy(plain(getattr(self, name))) for name in (
            "backbone", "pretrained", "text", "vision", "timm_name", "timm_args", "embed_dim", "frame_heads", "caption",
            "gradient_checkpointing", "frame_aggregation", "fusion", "frame_init", "text_pooling", "frame_fp16",
            "clip_length", "use_title_mask", "use_query_mask", "pixel_stats")}
        if self.momentum_encoder:
            arch["momentum"] = self.momentum
        if self.category_classes:   # stored only with a head, so other architectures read as before
            arch["category_classes"] = self.category_classes
        if not self.pretrained and get_backbone(self.backbone).fixed_input_size:
            arch["vision"] = {**arch["vision"], "image_size": self.image_size}
        # The input size it is trained for, which a CNN tower's own config does not state.
        arch["image_size"] = self.image_size
        return arch


@dataclass(frozen=True)
class LossConfig:
    weights: Mapping = option_field(None, "weights of the objective's terms by name, e.g. '{itc: 0.5}'",
                                    "--loss_weights", parse=yaml_value, factory=dict)
    logit_scale: float = option_field(20.0, "contrastive logit scale (temperature 1/scale)", parse=float)
    learnable_scale: bool = switch_field(False, "learn the logit scale")
    local_negatives: bool = switch_field(False, "in-batch negatives on each rank (the original) instead of gathering "
                                         "them from every rank")
    query_guidance: bool = switch_field(
        True, "query-guided objective; false: the ablation that contrasts a goods item directly with a video of "
        "the same query (the pair term) and nothing else")
    log_terms: tuple = option_field((), "terms computed and logged but left out of the total, e.g. '[itc]'",
                                    parse=yaml_value)
    is_xbm: bool = switch_field(False, "cross-batch memory of past embeddings as extra negatives")
    xbm_mode: str = option_field("ours", "ours (gathered pairs as extra negatives) or original (the release's per-rank "
                                 "bank)", choices=("ours", "original"))
    xbm_size: int | None = option_field(
        None, "rows of the cross-batch memory (default 4096; original: 10 x batch size)", parse=int)
    normalize_query: bool = switch_field(True, "score the unit query embedding (false: the original's raw query "
                                         "projection, whose norm multiplies the logit scale)")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = option_field(0.01, "base learning rate", "--lr", "--learning_rate", parse=float)
    optimizer: str = option_field("adamw", "adamw, adam or sgd", choices=("adamw", "adam", "sgd"))
    weight_decay: float = option_field(0.0, "weight decay", "--weight_decay", "--wd", parse=float)
    momentum: float = option_field(0.9, "SGD momentum", parse=float)
    epochs: int = option_field(10, "epochs to train", parse=int)
    max_steps: int = option_field(0, "stop after this many steps (0: no limit)", parse=int)
    accum_freq: int = option_field(
        1, "micro-batches of --batch_size per optimizer step: gradient accumulation that keeps the negatives of "
        "all of them (steps, epochs and --max_steps count optimizer steps)", parse=int)
    lr_schedule: str = option_field("step", "step (decay every --decay_epochs) or cosine (with warm-up)",
                                    choices=("step", "cosine"))
    decay_epochs: int = option_field(3, "epochs between step decays", parse=int)
    lr_decay_rate: float = option_field(0.1, "factor of each step decay", parse=float)
    warmup_steps: int = option_field(0, "linear warm-up steps of the cosine schedule", parse=int)
    clip_grad: float = option_field(5.0, "gradient norm clip (0: off)", parse=float)
    clip_grad_mode: str = option_field(
        "global", "global: one norm over every parameter; per_tower: the text and the vision tower each clipped "
        "on its own, the rest unclipped (the original)", choices=("global", "per_tower"))
    grad_scaler: str = option_field(
        "default", "fp16 grad scaler: default (PyTorch's), or original (initial scale = batch size, at most 128 x "
        "batch size, growth every 100 steps)", choices=("default", "original"))
    lr_mult: Mapping = option_field(None, "per-module LR multipliers, e.g. '{vision: 0.001}'", "--lr_mult",
                                    parse=yaml_value, factory=dict)
    train_vision: bool = switch_field(True, "train the vision tower (false: frozen)")
    mixed_precision_training: bool = switch_field(False, "AMP on CUDA (fp16 with a grad scaler, or bf16)")
    amp_dtype: str = option_field("fp16", "AMP dtype", choices=("fp16", "bf16"))


@dataclass(frozen=True)
class RunConfig:
    output_dir: str = option_field("outputs", "run folder: config.yaml, log.txt, tensorboard/, checkpoints/, features")
    checkpoints: str | None = option_field(None, "checkpoint folder (default OUTPUT_DIR/checkpoints)")
    keep_checkpoints: int = option_field(0, "keep the newest N numbered checkpoints (0: all)", parse=int)
    resume: str | None = option_field(
        None, "checkpoint to continue from (ours or the release's); 'latest': the newest one in the checkpoint "
        "folder, or a fresh start when there is none (pre-emptible jobs); 'init': untrained model")
    init_weights: str | None = option_field(None, "initialise the weights from a checkpoint and restart the schedule")
    release_config: str | None = option_field(None, "cn_clip-style config.json of a release checkpoint (default: "
                                              "ViT-B/16)")
    print_freq: int = option_field(50, "log every N steps", "--print_freq", "-p", parse=int)
    save_freq: int = option_field(0, "also save every N steps (0: end of epoch only)", "--save_freq", "-s", parse=int)
    save_epoch_freq: int = option_field(1, "save at the end of every N-th epoch (0: only by --save_interval_s); the "
                                        "last epoch is always saved", parse=int)
    save_interval_s: float = option_field(0.0, "also save at the end of an epoch when this many seconds have passed "
                                          "since the last save (0: off)", parse=float)
    val_freq: int = option_field(
        0, "every N epochs (and after the last) compute video->goods and goods->video Recall@K on the validation "
        "split (--val_dir), log it and keep the best model as best.pth.tar (0: off)", "--val_freq",
        "--val-frequency", parse=int)
    start_epoch: int = option_field(0, "epoch counter of a fresh run (a resumed run takes the checkpoint's)", parse=int)
    start_step: int = option_field(0, "global step of a fresh run (a resumed run takes the checkpoint's)",
                                   "--global_step", "--start_step", parse=int)
    dist_timeout: int = option_field(1800, "seconds before a stuck collective fails", parse=int)
    hang_timeout: float = option_field(
        600.0, "seconds a training process may go without progress (a step, a phase of one, a save) before it "
        "names its rank, phase and last step and exits non-zero, so that the job restarts (MAX_RESTARTS) or ends; "
        "long enough for a first step and a save, well below --dist_timeout (0: off)", parse=float)
    evaluate: bool = switch_field(False, "write the features of --test_file instead of training")
    legacy_text_features: bool = switch_field(False, "also write OUTPUT_DIR/features.feat in the original text format")
    feature_dtype: str = option_field("float32", "dtype of feature shards", choices=("float32", "float16"))
    feature_partition_size: int = option_field(
        65536, "items per feature partition file: extraction holds one partition in memory and a rerun continues "
        "after the last complete one", parse=int)


# Fields resolve() computes; they are not inputs (a YAML file or flag setting one is refused).
DERIVED = {"data": ("item_pairs", "step_batch_size", "category_labels", "category_names"),
           "model": ("clip_length", "image_size", "use_title_mask", "use_query_mask", "category_classes",
                     "momentum_encoder")}
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
