"""Which backbone a local weights folder holds, read from the folder's own ``config.json``.

Nothing is loaded: a Hugging Face folder names its ``model_type``; a timm folder (``save_for_hf``,
``push_to_hub``) names its ``architecture`` and ``pretrained_cfg``; each registered backbone says
whether a description is one of its folders (``Backbone.reads_folder``). This module imports no
model library, so the configuration can ask it before anything heavy is imported.
"""
from __future__ import annotations

import json
import os

from real20m.errors import InputError

from .backbones import BACKBONES


class BackboneFolderError(InputError, ValueError):
    """A folder given as backbone weights that no backbone can read; the message names it."""


def backbone_of_folder(folder: str) -> str:
    """The name of the backbone whose weights ``folder`` holds (the first registered that reads it)."""
    config_file = os.path.join(folder, "config.json")
    if not os.path.isfile(config_file):
        raise BackboneFolderError(f"{folder}: no config.json: not a Hugging Face or timm model folder")
    with open(config_file, encoding="utf-8") as handle:
        try:
            description = json.load(handle)
        except json.JSONDecodeError as error:
            raise BackboneFolderError(f"{config_file}: line {error.lineno}: not JSON ({error.msg})") from None
    if not isinstance(description, dict):
        raise BackboneFolderError(f"{config_file}: not a model description (a JSON object)")
    for backbone in BACKBONES.values():
        if backbone.reads_folder(description):
            return backbone.name
    readers = ", ".join(kind for kind in (backbone.folder_kind() for backbone in BACKBONES.values()) if kind)
    raise BackboneFolderError(
        f"{config_file}: model_type {description.get('model_type')!r}: no backbone reads it ({readers})")
