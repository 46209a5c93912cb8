"""How a text value of the command line or a YAML file becomes a typed one."""
from __future__ import annotations

import argparse
import re
from typing import Any

import yaml


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
