"""Everything the configuration reads from the file system: the backbone a weights folder holds,
whether ``--pretrained`` names a whole-model checkpoint, the newest checkpoint for
``--resume latest``, the validation split's files, the cluster file under ``data_root`` and the
goods-category vocabulary in it."""
from __future__ import annotations

import logging
import os

from real20m.config.file_layout import FileFacts, category_file_of, checkpoint_folder, cluster_file_of, \
    fill_data_paths
from real20m.config.resolution import category_labels_wanted
from real20m.config.schema import LATEST, ConfigError
from real20m.config.values import default_of
from real20m.models.backbone_folder import BackboneFolderError, backbone_of_folder
from real20m.models.backbones import get_backbone

# The package's logger: its records keep the name they had when the configuration was one module.
logger = logging.getLogger(__package__)

VALIDATION_FILES = ("video_queries.txt", "goods_gallery.txt", "eval_gt_video2goods.txt", "eval_gt_goods2video.txt")


def read_file_facts(values: dict) -> FileFacts:
    """What resolve() needs from the file system for the merged inputs ``values``; refuses a
    missing validation split when training validates."""
    data, run = values["data"], values["run"]
    latest = latest_checkpoint(checkpoint_folder(run)) if run["resume"] == LATEST else None
    cluster_present = bool(data["data_root"] and data["hard_sample"]
                           and os.path.exists(cluster_file_of(data["data_root"])))
    names = category_names(data) if category_labels_wanted(values) else ()
    facts = FileFacts(latest_checkpoint=latest, cluster_file_present=cluster_present, category_names=names)
    if run["val_freq"] and not run["evaluate"]:
        filled = dict(data)
        fill_data_paths(filled, facts.cluster_file_present)
        check_validation_split(filled["val_dir"])
    return facts


def category_names(data: dict) -> tuple[str, ...]:
    """The category vocabulary of the cluster file; none when there is no such file (building the
    training data then says so, naming it: a configuration may be resolved before its data exist)."""
    from real20m.datasets.categories import read_category_names
    path = category_file_of(data)
    return read_category_names(path) if path and os.path.isfile(path) else ()


def find_latest(folder: str):
    from real20m.engine.checkpoint import CheckpointManager
    return CheckpointManager(folder).latest()


def latest_checkpoint(folder: str) -> str | None:
    latest = find_latest(folder)
    logger.warning("--resume latest: %s", f"continuing from {latest}" if latest else
                   f"no checkpoint in {folder}, starting fresh")
    return str(latest) if latest else None


def check_validation_split(val_dir: str | None) -> None:
    if not val_dir:
        raise ConfigError("run.val_freq needs a validation split: set data.val_dir (or data.data_root)")
    missing = [name for name in VALIDATION_FILES if not os.path.isfile(os.path.join(val_dir, name))]
    if missing:
        raise ConfigError(f"{val_dir}: run.val_freq needs the validation files {', '.join(missing)}")


def is_training_checkpoint(path: str, backbone: str) -> bool:
    if path.endswith(".pth.tar"):
        return True
    return not get_backbone(backbone).reads_weights_file and os.path.isfile(path)


def select_folder_backbone(values: dict, explicit_backbone: bool) -> list[str]:
    """A local backbone folder selects the backbone its config.json names, unless --backbone is
    given (then the two must agree). A folder that names its own architecture (timm's) replaces
    the configured one (the tiny config's from-scratch CNN: timm_name and timm_args)."""
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
    superseded = get_backbone(found).folder_replaces
    replaced = " and ".join(f"{name} {model[name]}" for name in superseded if model[name])
    if replaced:
        note += f" (the folder's architecture replaces {replaced})"
        for name in superseded:
            model[name] = default_of(f"model.{name}")
    model["backbone"] = found
    return [note]
