"""The command line: the parser of every option's flags, ``--section.path VALUE`` for any dotted
path, and the layers (or the resolved configuration) of an argv."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from real20m.config.layers import ConfigLayers, base_values, resolve_layers
from real20m.config.options import OPTIONS, Option
from real20m.config.original_flags import add_original_arguments
from real20m.config.schema import SECTIONS, Config, ConfigError
from real20m.config.value_types import yaml_value
from real20m.config.values import default_of
from real20m.utils.entry import add_version_argument


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
        groups[option.path.split(".")[0]].add_argument(*option.flag_names, **_argument_of(option))
    add_original_arguments(parser)
    return parser


def _argument_of(option: Option) -> dict[str, Any]:
    """``add_argument``'s keywords for ``option``: help with its path and default, type, choices."""
    kwargs: dict[str, Any] = {"dest": option.path, "help": f"{option.help} [{option.path}]",
                              "default": argparse.SUPPRESS}
    default = default_of(option.path)
    if default is not None and default != {}:
        kwargs["help"] += f" (default: {default})"
    if option.type is not None:
        kwargs["type"] = option.type
    if option.choices:
        kwargs["choices"] = option.choices() if callable(option.choices) else option.choices
    if option.bare is not None:
        kwargs.update(nargs="?", const=option.bare, metavar="BOOL")
    elif option.choices is None:
        kwargs["metavar"] = option.path.split(".")[-1].upper()
    return kwargs


def split_dotted(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
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


def read_layers(argv: list[str] | None = None) -> ConfigLayers:
    """The layers of ``argv`` (default sys.argv[1:]): defaults, ``--config``'s YAML file, the flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, dotted = split_dotted(argv)
    args = vars(build_parser().parse_args(rest))
    base = base_values(args.get("config"))
    changes = [("seed", args["seed"], "command line")] if "seed" in args else []
    # In table order, so "--lr_mult {...}" merges before "--text_lr_factor".
    changes += [(option.path, args[option.path], "command line") for option in OPTIONS if option.path in args]
    changes += [(path, yaml_value(text), "command line") for path, text in dotted]
    explicit_backbone = "model.backbone" in args or any(path == "model.backbone" for path, _ in dotted)
    return ConfigLayers(base, tuple(changes), args, explicit_backbone, bool(args.get("print_config")))


def command_line_options(argv: list[str]) -> tuple[str | None, dict[str, Any]]:
    """(``--config``, {dotted path: value}) of ``main_cross_domain_emb.py`` flags, for a command
    that passes them on to a typed API (``Retriever.from_checkpoint``)."""
    layers = read_layers(argv)
    return layers.flags.get("config"), {path: value for path, value, _ in layers.changes}


def parse_config(argv: list[str] | None = None) -> Config:
    """The configuration of ``argv`` without a checkpoint layer (training, or evaluating the
    untrained model)."""
    return resolve_layers(read_layers(argv))
