"""The conversion: plan the shards, keep the complete ones, write the rest over a process pool."""
from __future__ import annotations

import os
import re
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable, Iterator

from real20m.datasets.items import ItemRoots
from real20m.datasets.layout import item_folders
from real20m.datasets.shards.manifest import Journal, known_records, write_manifest
from real20m.datasets.shards.plan import SOURCE_NAMES, ShardPlan, check_data_root, collect_items, plan_shards
from real20m.datasets.shards.samples import ImageSettings
from real20m.datasets.shards.writer import ShardResult, SourceRoots, keep_or_write
from real20m.errors import InputError

MAX_JPEG_QUALITY = 95  # Pillow: above 95 the files grow with no visible gain
_SOURCES = "|".join(SOURCE_NAMES.values())
# Files of earlier runs that this run's plan may not rewrite: a shard beyond the plan, a leftover temporary.
_OWN_FILE = re.compile(rf"^(?:(?:{_SOURCES})-\d{{6}}\.tar|\.(?:{_SOURCES})-\d{{6}}\.tar\..+\.tmp)$")


class ShardSettingsError(InputError, ValueError):
    """An option of the conversion out of its range; the message names it."""


@dataclass(frozen=True)
class ShardSettings:
    data_root: str
    out_dir: str
    shard_image_size: int = 256
    jpeg_quality: int = 90
    items_per_shard: int = 1000
    workers: int = 1
    dataset_name: str = "Real400K"
    frameid_root: str | None = None

    def __post_init__(self):
        for flag, value, ok, rule in (
                ("--shard_image_size", self.shard_image_size, self.shard_image_size >= 0, ">= 0"),
                ("--jpeg_quality", self.jpeg_quality, 1 <= self.jpeg_quality <= MAX_JPEG_QUALITY,
                 f"1..{MAX_JPEG_QUALITY}"),
                ("--items_per_shard", self.items_per_shard, self.items_per_shard >= 1, ">= 1"),
                ("--workers", self.workers, self.workers >= 1, ">= 1")):
            if not ok:
                raise ShardSettingsError(f"{flag} must be {rule}, got {value}")

    def recorded(self) -> dict:
        """What decides the shards' bytes (the manifest's settings; a change rewrites every shard)."""
        return {"shard_image_size": self.shard_image_size, "jpeg_quality": self.jpeg_quality,
                "items_per_shard": self.items_per_shard, "dataset_name": self.dataset_name,
                "frameid_root": self.frameid_root}

    def reading(self) -> SourceRoots:
        roots = ItemRoots(**item_folders(self.data_root, self.dataset_name), frameid_root=self.frameid_root)
        return SourceRoots(self.data_root, roots, ImageSettings(self.shard_image_size, self.jpeg_quality))


@dataclass(frozen=True)
class ShardSummary:
    manifest: dict
    written: int
    kept: int
    skipped: int


def plan(settings: ShardSettings) -> list[ShardPlan]:
    files = check_data_root(settings.data_root, settings.dataset_name)
    return plan_shards(collect_items(files), settings.items_per_shard, settings.recorded())


def make_shards(settings: ShardSettings, on_shard: Callable[[ShardResult], None] | None = None,
                on_plan: Callable[[list[ShardPlan]], None] | None = None) -> ShardSummary:
    """Write (or keep) every planned shard, then the index, skipped.tsv and manifest.json.
    ``on_plan`` sees the plan before any shard is written, ``on_shard`` each finished shard."""
    plans = plan(settings)
    if on_plan is not None:
        on_plan(plans)
    os.makedirs(settings.out_dir, exist_ok=True)
    known = known_records(settings.out_dir)
    remove_leftovers(settings.out_dir, {shard.name for shard in plans})
    journal = Journal(settings.out_dir)
    results = {}
    for result in finished_shards(settings, plans, known):
        journal.add(result.record)
        results[result.record["name"]] = result
        if on_shard is not None:
            on_shard(result)
    ordered = [results[shard.name] for shard in plans]
    manifest = write_manifest(settings.out_dir, settings.recorded(), ordered)
    journal.finish()
    kept = sum(result.kept for result in ordered)
    return ShardSummary(manifest, len(ordered) - kept, kept, sum(len(r.record["skipped"]) for r in ordered))


def finished_shards(settings: ShardSettings, plans: list[ShardPlan], known: dict) -> Iterator[ShardResult]:
    """Each shard kept or written, as it finishes: in plan order with one worker, else in any order."""
    reading = settings.reading()
    if settings.workers == 1:
        for shard in plans:
            yield keep_or_write(settings.out_dir, shard, reading, known.get(shard.name))
        return
    with ProcessPoolExecutor(max_workers=settings.workers) as pool:
        futures = [pool.submit(keep_or_write, settings.out_dir, shard, reading, known.get(shard.name))
                   for shard in plans]
        for future in as_completed(futures):
            yield future.result()


def remove_leftovers(out_dir: str, planned: set[str]) -> None:
    """Delete an earlier run's shards that the plan no longer has and its temporaries (nothing else)."""
    for name in os.listdir(out_dir):
        if _OWN_FILE.match(name) and name not in planned:
            os.remove(os.path.join(out_dir, name))
