"""Writing one shard (a worker's whole task) and reading back what it holds."""
from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass, field

import webdataset

from real20m.datasets.items import ItemRoots
from real20m.datasets.shards.plan import SOURCE_NAMES, ShardPlan
from real20m.datasets.shards.samples import ImageSettings, SampleBuilder
from real20m.utils.atomic import atomic_path

HASH_BLOCK = 1 << 20
# Fixed member metadata: the same items give the same bytes, whenever and by whom they are written.
MEMBER_OWNER = {"user": "real20m", "group": "real20m", "mode": 0o444, "mtime": 0}


@dataclass(frozen=True)
class SourceRoots:
    """What a worker needs to read items: the data root, the item roots and the image settings."""

    data_root: str
    roots: ItemRoots
    images: ImageSettings


@dataclass
class ShardResult:
    """A finished shard: its manifest record and its index entries (pid, {member: [offset, size]})."""

    record: dict
    entries: list = field(default_factory=list)
    kept: bool = False


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def member_offsets(path: str) -> list[tuple[int, dict[str, list[int]]]]:
    """(pid, {member name: [data offset, size]}) of every sample of the shard, in order, as the
    tar headers give them (``<pid>.<name>``: WebDataset's key ends at the first dot)."""
    entries: list[tuple[int, dict[str, list[int]]]] = []
    with tarfile.open(path, "r:") as archive:
        for member in archive:
            key, _, name = member.name.partition(".")
            if not entries or entries[-1][0] != int(key):
                entries.append((int(key), {}))
            entries[-1][1][name] = [member.offset_data, member.size]
    return entries


def write_shard(out_dir: str, plan: ShardPlan, reading: SourceRoots) -> ShardResult:
    """Write the plan's items to ``out_dir/<plan.name>`` (complete or not at all)."""
    builder = SampleBuilder(reading.data_root, reading.roots, reading.images, plan.source)
    path = os.path.join(out_dir, plan.name)
    skipped: list = []
    samples = 0
    with atomic_path(path) as temp, open(temp, "wb") as stream:
        writer = webdataset.TarWriter(stream, encoder=False, **MEMBER_OWNER)
        for item in plan.items:
            sample = builder.build(item, skipped)
            if sample is not None:
                writer.write(sample)
                samples += 1
        writer.close()
    return described(path, plan, samples, [list(row) for row in skipped])


def described(path: str, plan: ShardPlan, samples: int, skipped: list) -> ShardResult:
    record = {"name": plan.name, "source": SOURCE_NAMES[plan.source], "plan": plan.digest, "items": len(plan.items),
              "samples": samples, "bytes": os.path.getsize(path), "sha256": file_sha256(path), "skipped": skipped}
    return ShardResult(record, member_offsets(path))


def keep_or_write(out_dir: str, plan: ShardPlan, reading: SourceRoots, known: dict | None) -> ShardResult:
    """The shard as a previous run left it when it is complete (same plan, same sha256), else written anew."""
    path = os.path.join(out_dir, plan.name)
    if known is not None and known.get("plan") == plan.digest and os.path.isfile(path) \
            and os.path.getsize(path) == known.get("bytes") and file_sha256(path) == known.get("sha256"):
        return ShardResult(known, member_offsets(path), kept=True)
    return write_shard(out_dir, plan, reading)
