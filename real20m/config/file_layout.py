"""Where a run's files are, computed from the inputs alone (nothing here reads the file system):
the checkpoint folder and the dataset paths under ``data.data_root``."""
from __future__ import annotations

import os
from dataclasses import dataclass

from real20m.datasets.layout import item_folders


@dataclass(frozen=True)
class FileFacts:
    """What resolving needs to know about the file system, read beforehand (probes.read_file_facts)
    so that resolve() itself reads no file."""
    latest_checkpoint: str | None = None   # the newest checkpoint, when run.resume is "latest"
    cluster_file_present: bool = False     # DATA_ROOT/train_file/cluster.txt exists
    # The goods-category vocabulary (datasets/categories.py), read when a weighted loss term reads
    # categories and the cluster file exists.
    category_names: tuple[str, ...] = ()


def checkpoint_folder(run: dict) -> str:
    """``run.checkpoints``, by default OUTPUT_DIR/checkpoints."""
    return os.path.join(run["output_dir"], "checkpoints") if run["checkpoints"] is None else run["checkpoints"]


def cluster_file_of(data_root: str) -> str:
    return os.path.join(data_root, "train_file", "cluster.txt")


def category_file_of(data: dict) -> str | None:
    """The cluster file the category labels come from: data.cluster_file, else the layout's."""
    return data["cluster_file"] or (cluster_file_of(data["data_root"]) if data["data_root"] else None)


def fill_data_paths(data: dict, cluster_file_present: bool) -> None:
    """With data_root, every path left unset points into the standard Real400K/Real20M layout."""
    if not data["data_root"]:
        return
    layout = {**item_folders(data["data_root"], data["dataset_name"]),
              "train_file": os.path.join(data["data_root"], "train_file", "train.txt")}
    if data["hard_sample"] and cluster_file_present:
        layout["cluster_file"] = cluster_file_of(data["data_root"])
    layout["val_dir"] = os.path.join(data["data_root"], "val_file")
    for name, path in layout.items():
        if data[name] is None:
            data[name] = path
