"""Which items go into which shard: every item the annotation files reference, once, sorted by pid."""
from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import asdict, dataclass

import numpy as np

from real20m.datasets.annotations import ANNOTATION_FORMATS, GOODS, PHOTO, ItemTable, QueryGroups, annotation_format
from real20m.errors import InputError

# A source's name in the shard files (the dataset's folder names): goods, video.
SOURCE_NAMES = {GOODS: "goods", PHOTO: "video"}
ANNOTATION_FOLDERS = ("train_file", "test_file", "val_file")
FORMAT_VERSION = 1


class DataRootError(InputError, ValueError):
    """--data_root is not a dataset in the Real400K / Real20M layout; the message names the path."""


@dataclass(frozen=True)
class ItemRef:
    """One item as the annotation files give it: explicit frame paths (relative to the source's
    image root) and text path (relative to its text root), or None where the layout derives them."""

    pid: int
    frame_paths: tuple[str, ...] | None = None
    text_path: str | None = None

    @property
    def explicit(self) -> bool:
        return self.frame_paths is not None or self.text_path is not None


@dataclass(frozen=True)
class ShardPlan:
    source: int
    number: int
    items: tuple[ItemRef, ...]
    digest: str  # sha256 of the settings and items: a kept shard must have been written from this plan

    @property
    def name(self) -> str:
        return shard_name(self.source, self.number)


def shard_name(source: int, number: int) -> str:
    return f"{SOURCE_NAMES[source]}-{number:06d}.tar"


def annotation_files(data_root: str) -> list[str]:
    """The training file ``train_file/train.txt`` (either format) and every other ``*.txt`` one item a
    line in train_file/, test_file/ and val_file/ (ground truth, query and cluster files have other
    layouts and name no item files of their own)."""
    train = os.path.join(data_root, "train_file", "train.txt")
    files = [train] if os.path.isfile(train) else []
    items = ANNOTATION_FORMATS["items"]
    for folder in ANNOTATION_FOLDERS:
        for path in sorted(glob.glob(os.path.join(data_root, folder, "*.txt"))):
            if path != train and items.reads(path):
                files.append(path)
    return files


def check_data_root(data_root: str, dataset_name: str) -> list[str]:
    """The annotation files of ``data_root``; DataRootError when it is not the layout."""
    if not os.path.isdir(data_root):
        raise DataRootError(f"{data_root}: no such folder; --data_root names a Dataset/ folder in the Real400K layout")
    dataset = os.path.join(data_root, dataset_name)
    if not os.path.isdir(dataset):
        raise DataRootError(f"{data_root}: not the Real400K layout (no {dataset_name}/ folder in it)")
    files = annotation_files(data_root)
    if not files:
        raise DataRootError(f"{data_root}: not the Real400K layout (no annotation file: train_file/train.txt or "
                            f"an item file in {', '.join(ANNOTATION_FOLDERS)})")
    return files


def collect_items(files: list[str]) -> dict[int, dict[int, ItemRef]]:
    """source -> pid -> ItemRef of every item the files reference. When an item is listed with
    explicit paths, the first such listing (in file order) wins, as explicit paths win in the loader."""
    refs: dict[int, dict[int, ItemRef]] = {GOODS: {}, PHOTO: {}}
    for path in files:
        table = annotation_format(path).load(path, "zh")
        if isinstance(table, QueryGroups):
            _add_query_groups(table, refs)
        else:
            _add_item_table(table, refs)
    return refs


def _add_query_groups(table: QueryGroups, refs: dict) -> None:
    for source in (GOODS, PHOTO):
        for pid in np.unique(table.ids[source]).tolist():
            refs[source].setdefault(pid, ItemRef(pid))


def _add_item_table(table: ItemTable, refs: dict) -> None:
    for row, (pid, source) in enumerate(zip(table.pids.tolist(), table.sources.tolist())):
        _, frame_paths, text_path = table.fields(row)
        ref = ItemRef(pid, tuple(frame_paths) if frame_paths else None, text_path)
        known = refs[source].get(pid)
        if known is None or (ref.explicit and not known.explicit):
            refs[source][pid] = ref


def plan_shards(refs: dict[int, dict[int, ItemRef]], items_per_shard: int, settings: dict) -> list[ShardPlan]:
    """Goods shards, then video shards; item i of a source (by pid) goes to shard i // items_per_shard."""
    plans = []
    for source in (GOODS, PHOTO):
        items = [refs[source][pid] for pid in sorted(refs[source])]
        for number, start in enumerate(range(0, len(items), items_per_shard)):
            chunk = tuple(items[start:start + items_per_shard])
            plans.append(ShardPlan(source, number, chunk, _digest(settings, source, number, chunk)))
    return plans


def _digest(settings: dict, source: int, number: int, items: tuple[ItemRef, ...]) -> str:
    described = {"version": FORMAT_VERSION, "settings": settings, "shard": shard_name(source, number),
                 "items": [asdict(item) for item in items]}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
