"""real20m-search: table, JSON and JSON-lines output over a gallery written by --evaluate."""
import json
import os

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
    query = Retriever.from_checkpoint(trained[0], config=TINY, data_root=tiny_data_root).encode_queries(
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


def test_missing_gallery_is_an_error_message(trained, tiny_data_root, tmp_path, capsys):  # noqa: F811
    args = base_args(trained, tiny_data_root)
    args[args.index("--gallery") + 1] = str(tmp_path / "nowhere")
    assert main(args + ["--query", "红色"]) == 2
    assert "nowhere" in capsys.readouterr().err
