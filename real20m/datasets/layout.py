"""Where an item's files live in the Real400K / Real20M layout: the four item folders of a dataset,
and ``<root>/<pid % 50000>/<pid>.<ext>`` inside each.

The one place that knows the folder modulus and the item folders (importing it costs nothing: no torch)."""
from __future__ import annotations

import os

SHARD = 50000


def shard_folder(root: str, pid: int) -> str:
    """``<root>/<pid % 50000>``: the folder holding an item's image, frames and text."""
    return os.path.join(root, str(pid % SHARD))


def shard_path(root: str, pid: int, ext: str) -> str:
    """``<root>/<pid % 50000>/<pid>.<ext>``."""
    return os.path.join(shard_folder(root, pid), f"{pid}.{ext}")


def relative_shard_path(pid: int, ext: str) -> str:
    """``<pid % 50000>/<pid>.<ext>``, relative to a source's root (as item files list frames)."""
    return f"{pid % SHARD}/{pid}.{ext}"


def item_folders(data_root: str, dataset_name: str) -> dict[str, str]:
    """The goods and video image and text folders of ``<data_root>/<dataset_name>`` (Real400K, Real20M),
    by the names the configuration gives them."""
    dataset = os.path.join(data_root, dataset_name)
    return {"goods_img_root": os.path.join(dataset, "goods", "images"),
            "goods_text_root": os.path.join(dataset, "goods", "text"),
            "photo_img_root": os.path.join(dataset, "video", "images"),
            "photo_text_root": os.path.join(dataset, "video", "text")}
