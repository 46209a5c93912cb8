"""Which backbone a local weights folder holds, read from the folder's own ``config.json``.

Nothing is loaded: a Hugging Face folder names its ``model_type``; a timm folder (``save_for_hf``,
``push_to_hub``) names its ``architecture`` and ``pretrained_cfg``. This module imports no model
library, so the configuration can ask it before anything heavy is imported.
"""
from __future__ import annotations

import json
import os

# Hugging Face model_type -> backbone
HF_MODEL_TYPES = {"chinese_clip": "chinese_clip", "clip": "clip"}
TIMM_FOLDER_KEYS = ("architecture", "pretrained_cfg")


class BackboneFolderError(ValueError):
    """A folder given as backbone weights that no backbone can read; the message names it."""


def backbone_of_folder(folder: str) -> str:
    """The backbone (``chinese_clip``, ``clip`` or ``timm``) whose weights ``folder`` holds."""
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
    model_type = description.get("model_type")
    if model_type in HF_MODEL_TYPES:
        return HF_MODEL_TYPES[model_type]
    if any(key in description for key in TIMM_FOLDER_KEYS):
        return "timm"
    raise BackboneFolderError(
        f"{config_file}: model_type {model_type!r}: no backbone reads it (Hugging Face "
        f"{', '.join(sorted(HF_MODEL_TYPES))}, or a timm folder with an 'architecture')")
