"""A new annotation format is one registry entry: a JSON-lines train file, registered here and
nowhere else, trains through the real training entry point."""
import json
import os

import numpy as np
import pytest

from real20m.cli.train import run as train_main
from real20m.datasets import annotations
from real20m.datasets.annotations import AnnotationFormat, QueryGroups, load_query_groups
from real20m.utils.checkpoint_io import load_checkpoint
from tests.engine.test_trainer import tiny_argv


def load_jsonl_groups(path: str, language: str) -> QueryGroups:
    """``{"query": ..., "goods": [pid, ...], "videos": [pid, ...]}`` a line, as the CSR tables."""
    with open(path, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    encoded = [row["query"].encode("utf-8") for row in rows]
    members = [[row["goods"] for row in rows], [row["videos"] for row in rows]]
    return QueryGroups(
        path=path,
        query_bytes=np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(),
        query_offsets=np.cumsum([0] + [len(text) for text in encoded]).astype(np.int64),
        indptr=tuple(np.cumsum([0] + [len(ids) for ids in lists]).astype(np.int64) for lists in members),
        ids=tuple(np.array([pid for ids in lists for pid in ids], dtype=np.int64) for lists in members),
    )


JSONL = AnnotationFormat("jsonl_groups", lambda path: path.endswith(".jsonl"), load_jsonl_groups, False)


@pytest.fixture
def jsonl_format(monkeypatch):
    monkeypatch.setitem(annotations.ANNOTATION_FORMATS, JSONL.name, JSONL)
    return JSONL


def write_jsonl(groups: QueryGroups, path: str) -> int:
    with open(path, "w", encoding="utf-8") as handle:
        for row in range(len(groups)):
            members = [[groups.member(row, source, i) for i in range(groups.member_counts_at(row, source))]
                       for source in (0, 1)]
            handle.write(json.dumps({"query": groups.query(row), "goods": members[0], "videos": members[1]},
                                    ensure_ascii=False) + "\n")
    return len(groups)


def test_the_registered_format_reads_what_the_built_in_one_reads(jsonl_format, tiny_data_root, tmp_path):
    original = load_query_groups(os.path.join(tiny_data_root, "train_file", "train.txt"))
    path = str(tmp_path / "train.jsonl")
    write_jsonl(original, path)
    assert annotations.annotation_format(path).name == "jsonl_groups"
    converted = annotations.annotation_format(path).load(path, "zh")
    assert [converted.query(row) for row in range(len(converted))] == \
        [original.query(row) for row in range(len(original))]
    for source in (0, 1):
        assert np.array_equal(converted.indptr[source], original.indptr[source])
        assert np.array_equal(converted.ids[source], original.ids[source])


def test_a_run_trains_from_a_file_in_the_registered_format(jsonl_format, tiny_data_root, tmp_path):
    path = str(tmp_path / "train.jsonl")
    rows = write_jsonl(load_query_groups(os.path.join(tiny_data_root, "train_file", "train.txt")), path)
    train_main(tiny_argv(tiny_data_root, tmp_path / "run", "--train_file", path, "--max_steps", "2"))
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pth.tar")
    assert state["global_step"] == 2 and rows > 0
    assert state["config"]["data"]["train_file"] == path


def test_without_the_entry_the_file_is_refused_with_its_line(tiny_data_root, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"query": "q", "goods": [1], "videos": []}\n', encoding="utf-8")
    with pytest.raises(annotations.AnnotationError, match=r"train\.jsonl:1: expected 3 or 4"):
        annotations.annotation_format(str(path))
