"""The files next to the shards: manifest, journal of finished shards, index and skipped list."""
from __future__ import annotations

import json
import os

from real20m.datasets.shards.plan import FORMAT_VERSION, SOURCE_NAMES
from real20m.datasets.shards.writer import ShardResult, file_sha256
from real20m.errors import InputError
from real20m.utils.atomic import atomic_open

MANIFEST = "manifest.json"
JOURNAL = "manifest.partial.jsonl"  # a record per finished shard while a run goes on
SKIPPED = "skipped.tsv"
SKIPPED_HEADER = ("source", "pid", "path", "reason")


class ShardVerifyError(InputError, ValueError):
    """A shard that is missing or differs from the manifest; the message names it."""


def index_name(source: str) -> str:
    return f"{source}-index.jsonl"


def read_manifest(out_dir: str) -> dict:
    path = os.path.join(out_dir, MANIFEST)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ShardVerifyError(f"{path}: not a shard manifest ({error})") from None


def known_records(out_dir: str) -> dict[str, dict]:
    """Shard name -> record of the shards an earlier run finished (manifest, then its journal)."""
    records = {}
    if os.path.isfile(os.path.join(out_dir, MANIFEST)):
        try:
            records.update((record["name"], record) for record in read_manifest(out_dir).get("shards", []))
        except ShardVerifyError:
            pass  # an unreadable manifest keeps nothing: every shard is written again
    journal = os.path.join(out_dir, JOURNAL)
    if os.path.isfile(journal):
        with open(journal, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the line a killed run was writing
                records[record["name"]] = record
    return records


class Journal:
    """Appends each finished shard's record, so that an interrupted run's shards are kept by the next."""

    def __init__(self, out_dir: str):
        self.handle = open(os.path.join(out_dir, JOURNAL), "a", encoding="utf-8")

    def add(self, record: dict) -> None:
        self.handle.write(json.dumps(record, sort_keys=True) + "\n")
        self.handle.flush()

    def finish(self) -> None:
        self.handle.close()
        os.remove(self.handle.name)


def write_index(out_dir: str, source: str, results: list[ShardResult]) -> str:
    name = index_name(source)
    with atomic_open(os.path.join(out_dir, name), encoding="utf-8") as handle:
        for result in results:
            for pid, members in result.entries:
                handle.write(json.dumps({"pid": pid, "shard": result.record["name"], "members": members}) + "\n")
    return name


def write_skipped(out_dir: str, results: list[ShardResult]) -> int:
    rows = [row for result in results for row in result.record["skipped"]]
    with atomic_open(os.path.join(out_dir, SKIPPED), encoding="utf-8") as handle:
        for row in [SKIPPED_HEADER, *rows]:
            handle.write("\t".join(map(str, row)) + "\n")
    return len(rows)


def source_totals(source: str, results: list[ShardResult], index: str) -> dict:
    records = [result.record for result in results]
    return {"shards": len(records), "samples": sum(record["samples"] for record in records),
            "bytes": sum(record["bytes"] for record in records),
            "skipped": sum(len(record["skipped"]) for record in records), "index": index}


def write_manifest(out_dir: str, settings: dict, results: list[ShardResult]) -> dict:
    """Index files, skipped.tsv and manifest.json for the finished shards (goods first, as planned)."""
    sources = {}
    for source in SOURCE_NAMES.values():
        of_source = [result for result in results if result.record["source"] == source]
        sources[source] = source_totals(source, of_source, write_index(out_dir, source, of_source))
    write_skipped(out_dir, results)
    manifest = {"format": "webdataset", "version": FORMAT_VERSION, "settings": settings, "sources": sources,
                "shards": [result.record for result in results]}
    with atomic_open(os.path.join(out_dir, MANIFEST), encoding="utf-8", durable=True) as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
    return manifest


def verify_shards(out_dir: str) -> int:
    """Re-hash every shard of the manifest; ShardVerifyError names the first that differs.
    Returns the number of shards checked."""
    if not os.path.isfile(os.path.join(out_dir, MANIFEST)):
        raise ShardVerifyError(f"{os.path.join(out_dir, MANIFEST)}: no shard manifest (write the shards first)")
    shards = read_manifest(out_dir).get("shards", [])
    for record in shards:
        path = os.path.join(out_dir, record["name"])
        if not os.path.isfile(path):
            raise ShardVerifyError(f"{path}: missing (listed in the manifest)")
        if os.path.getsize(path) != record["bytes"]:
            raise ShardVerifyError(f"{path}: {os.path.getsize(path)} bytes, the manifest says {record['bytes']}")
        if file_sha256(path) != record["sha256"]:
            raise ShardVerifyError(f"{path}: sha256 differs from the manifest's")
    return len(shards)
