"""real20m-search: table, JSON and JSON-lines output over a gallery written by --evaluate."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from real20m.evaluate.feature_io import load_features
from real20m.retrieval import Retriever
from real20m.search_cli import main
from tests.test_retrieval import TINY, trained  # noqa: F401  (the module-scoped checkpoint fixture)


def base_args(trained, data_root):  # noqa: F811
    return ["--checkpoint", trained[0], "--gallery", trained[1], "--config", TINY, "--data_root", data_root,
            "--items", os.path.join(data_root, "test_file", "goods_gallery.txt")]


def test_single_query_json_has_ranked_scored_results(trained, tiny_data_root, capsys):  # noqa: F811
    assert main(base_args(trained, tiny_data_root) + ["--query", "红色条纹棉质T恤", "-k", "3", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["query"] == "红色条纹棉质T恤" and len(record["results"]) == 3
    assert set(record["results"][0]) == {"pid", "score", "source", "title"}
    scores = [result["score"] for result in record["results"]]
    assert scores == sorted(scores, reverse=True)
    # The scores are the inner products of the query with the --evaluate features.
    written = load_features(trained[1])
    gallery = dict(zip(written.ids.tolist(), np.asarray(written.feats)))
    query = Retriever.from_checkpoint(trained[0], config=TINY, data=tiny_data_root).encode_queries(
        ["红色条纹棉质T恤"])[0]
    for result in record["results"]:
        assert result["score"] == pytest.approx(float(gallery[result["pid"]] @ query), abs=1e-5)
        assert result["source"] == "goods" and result["title"]


def test_query_table_lists_pid_source_title_and_score(trained, tiny_data_root, capsys):  # noqa: F811
    assert main(base_args(trained, tiny_data_root) + ["--query", "黑色格子皮革背包", "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "pid" in out and "score" in out and out.count("goods") == 2


def test_queries_file_writes_one_json_line_per_query(trained, tiny_data_root, tmp_path):  # noqa: F811
    queries = tmp_path / "queries.txt"
    queries.write_text("红色条纹棉质T恤\n\n黄色条纹棉质连衣裙\n绿色\n", encoding="utf-8")
    out = tmp_path / "results.jsonl"
    assert main(base_args(trained, tiny_data_root) + ["--queries", str(queries), "--out", str(out), "-k", "20"]) == 0
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [record["query"] for record in records] == ["红色条纹棉质T恤", "黄色条纹棉质连衣裙", "绿色"]
    assert all(len(record["results"]) == 8 for record in records)   # k is cut at the gallery size
    assert all(isinstance(result["pid"], int) for record in records for result in record["results"])


def test_the_search_backend_is_chosen_by_name(trained, tiny_data_root, capsys):  # noqa: F811
    query = ["--query", "黑色格子皮革背包", "-k", "3", "--json"]
    assert main(base_args(trained, tiny_data_root) + query) == 0
    default = capsys.readouterr().out
    assert main(base_args(trained, tiny_data_root) + query + ["--search_backend", "exact"]) == 0
    assert capsys.readouterr().out == default
    assert main(base_args(trained, tiny_data_root) + query + ["--search_backend", "nope"]) == 2
    assert "unknown search backend 'nope'; registered: exact, faiss" in capsys.readouterr().err


def test_missing_gallery_is_an_error_message(trained, tiny_data_root, tmp_path, capsys):  # noqa: F811
    args = base_args(trained, tiny_data_root)
    args[args.index("--gallery") + 1] = str(tmp_path / "nowhere")
    assert main(args + ["--query", "红色"]) == 2
    assert "nowhere" in capsys.readouterr().err


def run_search_cli(tmp_path, *flags):
    """``real20m-search`` in a fresh process, with a checkpoint and a gallery that do not exist."""
    command = [sys.executable, "-m", "real20m.search_cli", "--checkpoint", str(tmp_path / "no.pth.tar"),
               "--gallery", str(tmp_path / "no_gallery"), *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)


@pytest.mark.parametrize("flags, message", [
    (["--query", ""], "error: empty query: type a few words to search for"),
    (["--query", " \t "], "error: empty query: type a few words to search for"),
    (["--query", "红色", "--query", "长" * 201], "error: query too long: 201 characters, at most 200 allowed"),
    (["--query", "红色", "-k", "0"], "error: k must be a whole number from 1 to 1000, got 0"),
    (["--query", "红色", "-k", "1001"], "error: k must be a whole number from 1 to 1000, got 1001"),
])
def test_a_bad_query_is_one_line_and_exit_2_before_any_model_is_loaded(tmp_path, flags, message):
    result = run_search_cli(tmp_path, *flags)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [message]      # the rule, not the missing checkpoint
    assert result.stdout == ""


def test_a_bad_line_of_a_queries_file_is_named(tmp_path):
    queries = tmp_path / "queries.txt"
    queries.write_text("红色条纹棉质T恤\n\n" + "长" * 201 + "\n", encoding="utf-8")
    result = run_search_cli(tmp_path, "--queries", str(queries))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {queries}:3: query too long: 201 characters, at most 200 allowed"]
