"""The original release's flags that no option holds: ``--finetune``, whose meaning depends on
its value, the ones it parsed and never used (accepted with a warning) and its live-stream
sources (refused)."""
from __future__ import annotations

import argparse
import logging

from real20m.config.probes import is_training_checkpoint
from real20m.config.schema import ConfigError

# The package's logger: its records keep the name they had when the configuration was one module.
logger = logging.getLogger(__package__)

# The original parsed these and never used them; they are accepted with one warning.
UNUSED_ORIGINAL_FLAGS = {
    "--sample_info_file": "PATH", "--cls_num": "N", "--train_file_part_num": "N",
    "--using_other_transforms": None, "--evaluate_live2goods": None, "--evaluate_query2goods_query": None,
    "--evaluate_query2goods_goods": None, "--evaluate_goods2caption": None,
}
LIVE_FLAGS = ("--live_img_root", "--live_text_root")


def add_original_arguments(parser: argparse.ArgumentParser) -> None:
    """The unused and the live-stream flags, in a group of their own."""
    original = parser.add_argument_group("original flags without effect (accepted, with a warning)")
    for flag, metavar in UNUSED_ORIGINAL_FLAGS.items():
        if metavar is None:
            original.add_argument(flag, action="store_true", dest=f"unused:{flag}", help="no effect")
        else:
            original.add_argument(flag, metavar=metavar, dest=f"unused:{flag}", help="no effect")
    for flag in LIVE_FLAGS:
        original.add_argument(flag, metavar="PATH", dest=f"live:{flag}",
                              help="live-stream source: not supported (the release has no live data)")


def apply_original_flags(values: dict, args: dict) -> list[str]:
    """Flags whose meaning depends on their value, and flags of the original without effect;
    returns what their values decided."""
    notes = []
    finetune = args.get("finetune")
    if finetune is True:
        values["optim"]["train_vision"] = True
    elif finetune:
        values["run"]["init_weights"] = finetune
    pretrained = values["model"]["pretrained"]
    if isinstance(pretrained, str) and is_training_checkpoint(pretrained, values["model"]["backbone"]):
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
