"""Configuration: YAML file + command line, with the original release's flag names.

A run is described by one flat ``argparse.Namespace``. Values come, in increasing priority, from the
defaults below, from ``--config FILE.yaml`` and from the command line. The YAML file is flat too,
except for its ``model:`` section (the tower/fusion architecture) and ``loss_weights:``, which stay
dictionaries because they are never set one by one on the command line.
"""
from __future__ import annotations

import argparse
import os
from typing import Any

import yaml

DEFAULT_LOSS_WEIGHTS = {"fused": 1.0, "title": 1.0, "visual": 1.0, "caption": 1.0, "itc": 0.0}
DEFAULT_LR_MULT = {"text": 1e-2, "vision": 1e-3, "fusion": 1.0, "frame": 1e-2, "caption": 1e-3}


def _str2bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("1", "true", "yes", "y", "on"):
        return True
    if value.lower() in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train the QCD cross-domain embedding model, or (--evaluate) write item features.")
    parser.add_argument("--config", default=None, help="YAML file; command-line flags override it")
    parser.add_argument("--seed", type=int, default=0)

    data = parser.add_argument_group("data (original flag names)")
    data.add_argument("--data_root", default=None,
                      help="a Dataset/ folder in the Real400K layout; fills in every path not given")
    data.add_argument("--dataset_name", default="Real400K", help="Real400K or Real20M (folder under data_root)")
    data.add_argument("--train_file", default=None)
    data.add_argument("--test_file", default=None)
    data.add_argument("--goods_img_root", default=None)
    data.add_argument("--goods_text_root", default=None)
    data.add_argument("--photo_img_root", default=None)
    data.add_argument("--photo_text_root", default=None)
    data.add_argument("--frameid_root", default=None)
    data.add_argument("--cluster_file", default=None)
    data.add_argument("--hard_sample", type=_str2bool, nargs="?", const=True, default=False)
    data.add_argument("--clip_length", type=int, default=5)
    data.add_argument("--image_size", type=int, default=224)
    data.add_argument("--max_query_len", type=int, default=32)
    data.add_argument("--max_title_len", type=int, default=64)
    data.add_argument("--text_aug", type=_str2bool, nargs="?", const=True, default=True)
    data.add_argument("--compat", choices=("default", "original"), default="default",
                      help="'original' reproduces the release: titles without attention mask, "
                           "nearest-neighbour resize of evaluation frames")
    data.add_argument("--tokenizer", default=None,
                      help="tokenizer name or folder; default: the backbone's, or a WordPiece vocabulary "
                           "trained on the training text for from-scratch configs")
    data.add_argument("--vocab_size", type=int, default=8000, help="size of a from-scratch WordPiece vocabulary")

    model = parser.add_argument_group("model")
    model.add_argument("--embedding_size", type=int, default=None, help="overrides model.embed_dim")
    model.add_argument("--pretrained", default=None, help="overrides model.pretrained (hub name or folder)")
    model.add_argument("--gradient_checkpointing", type=_str2bool, nargs="?", const=True, default=None)

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--batch_size", type=int, default=80, help="per process")
    optim.add_argument("--lr", type=float, default=0.01)
    optim.add_argument("--optimizer", choices=("adamw", "adam", "sgd"), default="adamw")
    optim.add_argument("--weight_decay", type=float, default=0.0)
    optim.add_argument("--epochs", type=int, default=10)
    optim.add_argument("--max_steps", type=int, default=0, help="stop after this many steps (0: no limit)")
    optim.add_argument("--lr_schedule", choices=("step", "cosine"), default="step")
    optim.add_argument("--decay_epochs", type=int, default=3)
    optim.add_argument("--lr_decay_rate", type=float, default=0.1)
    optim.add_argument("--warmup_steps", type=int, default=0)
    optim.add_argument("--clip_grad", type=float, default=5.0)

    loss = parser.add_argument_group("objective")
    loss.add_argument("--logit_scale", type=float, default=20.0)
    loss.add_argument("--learnable_scale", type=_str2bool, nargs="?", const=True, default=False)
    loss.add_argument("--delta", type=float, default=1.0, help="weight of mean((fused - visual)^2)")
    loss.add_argument("--is_xbm", type=_str2bool, nargs="?", const=True, default=False)
    loss.add_argument("--xbm_size", type=int, default=4096)

    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", default="outputs")
    run.add_argument("--checkpoints", default=None, help="checkpoint folder (default OUTPUT_DIR/checkpoints)")
    run.add_argument("--keep_checkpoints", type=int, default=0,
                     help="keep only the newest N numbered checkpoints (0: keep all); last.pth.tar always stays")
    run.add_argument("--resume", default=None,
                     help="checkpoint to continue from (ours or the paper's release); 'init' = untrained model")
    run.add_argument("--release_config", default=None,
                     help="cn_clip-style config.json of a release checkpoint (default: the paper's ViT-B/16)")
    run.add_argument("--finetune", default=None, help="initialise the weights from a checkpoint, restart the schedule")
    run.add_argument("--workers", type=int, default=4)
    run.add_argument("--print_freq", type=int, default=50)
    run.add_argument("--save_freq", type=int, default=0, help="save every N steps too (0: end of epoch only)")
    run.add_argument("--mixed_precision_training", type=_str2bool, nargs="?", const=True, default=False)
    run.add_argument("--amp_dtype", choices=("fp16", "bf16"), default="fp16")
    run.add_argument("--dist_timeout", type=int, default=1800, help="seconds before a stuck collective fails")
    run.add_argument("--evaluate", action="store_true", help="write the features of --test_file, no training")
    run.add_argument("--legacy_text_features", action="store_true",
                     help="also write OUTPUT_DIR/features.feat in the original text format")
    run.add_argument("--feature_dtype", choices=("float32", "float16"), default="float32")
    return parser


def load_yaml(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        content = yaml.safe_load(handle) or {}
    if not isinstance(content, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of option names to values")
    return content


def parse_config(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` on top of the YAML file named by ``--config`` (if any)."""
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    file_values: dict[str, Any] = load_yaml(known.config) if known.config else {}
    model_cfg = dict(file_values.pop("model", {}) or {})
    loss_weights = {**DEFAULT_LOSS_WEIGHTS, **(file_values.pop("loss_weights", {}) or {})}
    lr_mult = {**DEFAULT_LR_MULT, **(file_values.pop("lr_mult", {}) or {})}

    option_names = {action.dest for action in parser._actions}
    unknown = sorted(set(file_values) - option_names)
    if unknown:
        raise ValueError(f"{known.config}: unknown option(s) {', '.join(unknown)}")
    parser.set_defaults(**file_values)
    cfg = parser.parse_args(argv)

    cfg.model = model_cfg
    cfg.loss_weights = loss_weights
    cfg.lr_mult = lr_mult
    _apply_overrides(cfg)
    _fill_data_paths(cfg)
    return cfg


def _apply_overrides(cfg: argparse.Namespace) -> None:
    """Flags that exist for the original scripts' sake and land in the model section."""
    if cfg.embedding_size is not None:
        cfg.model["embed_dim"] = cfg.embedding_size
    if cfg.pretrained is not None:
        cfg.model["pretrained"] = cfg.pretrained
    if cfg.gradient_checkpointing is not None:
        cfg.model["gradient_checkpointing"] = cfg.gradient_checkpointing
    cfg.model.setdefault("clip_length", cfg.clip_length)
    if "vision" in cfg.model and not cfg.model.get("pretrained"):
        # A from-scratch vision tower is built for the image size the data pipeline produces.
        cfg.model["vision"] = {**cfg.model["vision"], "image_size": cfg.image_size}
    if cfg.checkpoints is None:
        cfg.checkpoints = os.path.join(cfg.output_dir, "checkpoints")


def _fill_data_paths(cfg: argparse.Namespace) -> None:
    """With --data_root, every path left unset points into the standard Real400K/Real20M layout."""
    if not cfg.data_root:
        return
    dataset = os.path.join(cfg.data_root, cfg.dataset_name)
    defaults = {
        "goods_img_root": os.path.join(dataset, "goods", "images"),
        "goods_text_root": os.path.join(dataset, "goods", "text"),
        "photo_img_root": os.path.join(dataset, "video", "images"),
        "photo_text_root": os.path.join(dataset, "video", "text"),
        "train_file": os.path.join(cfg.data_root, "train_file", "train.txt"),
    }
    cluster = os.path.join(cfg.data_root, "train_file", "cluster.txt")
    if cfg.hard_sample and os.path.exists(cluster):
        defaults["cluster_file"] = cluster
    for name, path in defaults.items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, path)
