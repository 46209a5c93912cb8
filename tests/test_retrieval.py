"""real20m.retrieval: the Python API gives the --evaluate features and their inner products; the
query embedding entry point and the query task scripts feed evaluation.py."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from real20m.datasets.annotations import load_ground_truth
from real20m.cli.train import run as train_main
from real20m.engine.trainer import Trainer
from real20m.evaluate import cli as evaluation
from real20m.evaluate.feature_io import load_features, write_legacy_features
from real20m.retrieval import Hit, QueryError, QueryFileError, Retriever, SearchRules, embed_query_file, \
    main as retrieval_main, read_queries
from tests.engine.test_inference import FIXTURE, eval_argv
from tests.engine.test_trainer import SINGLE_CPU, tiny_cfg
from tests.test_shell_entry_points import run_script

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def trained(tiny_data_root, tmp_path_factory):
    """A 2-step tiny checkpoint and the gallery features --evaluate writes for it."""
    root = tmp_path_factory.mktemp("retrieval")
    Trainer(tiny_cfg(tiny_data_root, root / "run", "--max_steps", "2"), SINGLE_CPU).fit()
    checkpoint = str(root / "run" / "checkpoints" / "last.pth.tar")
    train_main(eval_argv(tiny_data_root, root / "gallery", "--resume", checkpoint))
    return checkpoint, str(root / "gallery")


@pytest.fixture(scope="module")
def retriever(trained, tiny_data_root):
    return Retriever.from_checkpoint(trained[0], config=TINY, data=tiny_data_root)


def gallery_file(data_root):
    return os.path.join(data_root, "test_file", "goods_gallery.txt")


def test_encode_items_equals_the_evaluate_features(retriever, trained, tiny_data_root):
    ids, feats = retriever.encode_items(gallery_file(tiny_data_root), batch_size=4)
    written = load_features(trained[1])
    assert ids.dtype == np.int64 and feats.dtype == np.float32
    assert np.array_equal(ids, written.ids)
    np.testing.assert_allclose(feats, np.asarray(written.feats), rtol=0, atol=1e-6)


def test_queries_are_unit_vectors_independent_of_the_batch(retriever):
    texts = ["红色条纹棉质T恤", "黑色格子皮革背包", "绿色波点丝绸帽子", "蓝色"]
    feats = retriever.encode_queries(texts)
    assert feats.shape == (4, retriever.dim) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([retriever.encode_queries([text], batch_size=1) for text in texts])
    np.testing.assert_allclose(one_by_one, feats, atol=1e-5)


def test_search_scores_are_dot_products_with_the_evaluate_features(retriever, trained, tiny_data_root):
    qids, texts = read_queries(os.path.join(tiny_data_root, "test_file", "queries.txt"))
    retriever.load_gallery(trained[1], items=gallery_file(tiny_data_root))
    written = load_features(trained[1])
    gallery = dict(zip(written.ids.tolist(), np.asarray(written.feats)))
    query_feats = retriever.encode_queries(texts)
    results = retriever.search(texts, k=5)
    assert len(results) == len(texts)
    for query, hits in zip(query_feats, results):
        assert len(hits) == 5 and all(isinstance(hit, Hit) for hit in hits)
        scores = [hit.score for hit in hits]
        assert scores == sorted(scores, reverse=True)
        for hit in hits:
            assert hit.score == pytest.approx(float(gallery[hit.pid] @ query), abs=1e-5)
            assert hit.source == "goods" and hit.title and os.path.isfile(hit.image_path)
        best = max(gallery, key=lambda pid: float(gallery[pid] @ query))
        assert hits[0].pid == best
    # Features instead of texts give the same hits.
    assert retriever.search(query_feats, k=5) == results


@pytest.mark.parametrize("texts, k, message", [
    ([""], 5, "empty query"), (["红色", " \n "], 5, "empty query"), (["长" * 201], 5, "query too long: 201"),
    (["红色"], 0, "from 1 to 1000, got 0"), (["红色"], 1001, "got 1001"), (["红色"], 2.5, "got 2.5"),
])
def test_search_refuses_what_the_search_rules_refuse(retriever, trained, tiny_data_root, texts, k, message):
    retriever.load_gallery(trained[1], items=gallery_file(tiny_data_root))
    with pytest.raises(QueryError, match=message):
        retriever.search(texts, k=k)


def test_search_drops_surrounding_white_space_and_takes_other_rules(retriever, trained, tiny_data_root):
    retriever.load_gallery(trained[1], items=gallery_file(tiny_data_root))
    assert retriever.search(["  红色条纹棉质T恤\t"], k=3) == retriever.search(["红色条纹棉质T恤"], k=3)
    retriever.rules = SearchRules(max_query_chars=4)
    try:
        with pytest.raises(QueryError, match="at most 4 allowed"):
            retriever.search(["红色条纹棉质T恤"], k=3)
    finally:
        del retriever.rules   # back to the class's rules for the other tests


def test_legacy_feature_file_and_saved_index_give_the_same_results(retriever, trained, tiny_data_root, tmp_path):
    written = load_features(trained[1])
    legacy = str(tmp_path / "gallery.feat")
    write_legacy_features(legacy, written.ids, np.asarray(written.feats))
    items = gallery_file(tiny_data_root)
    texts = ["红色条纹棉质T恤", "黄色条纹棉质连衣裙"]
    retriever.load_gallery(trained[1], items=items)
    expected = retriever.search(texts, k=4)
    retriever.load_gallery(legacy, items=items)
    assert [[hit.pid for hit in hits] for hits in retriever.search(texts, k=4)] == \
        [[hit.pid for hit in hits] for hits in expected]

    # An index folder saved by evaluation.py (IVF with one cell visited exhaustively: exact scores).
    queries = str(tmp_path / "queries")
    embed_query_file(os.path.join(tiny_data_root, "test_file", "queries.txt"), trained[0], queries,
                     config_args=["--config", TINY, "--data_root", tiny_data_root, "--workers", "0"])
    evaluation.main(["--query_features", queries, "--gallery_features", trained[1], "--quiet",
                     "--gt_file", os.path.join(tiny_data_root, "test_file", "eval_gt_query2goods.txt"),
                     "--output_dir", str(tmp_path / "eval"), "--index", "IVF1,Flat",
                     "--save_index", str(tmp_path / "index")])
    retriever.load_gallery(str(tmp_path / "index"), items=items)
    from_index = retriever.search(texts, k=4)
    assert [[hit.pid for hit in hits] for hits in from_index] == [[hit.pid for hit in hits] for hits in expected]
    for got, want in zip(from_index, expected):
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)
        assert [h.title for h in got] == [h.title for h in want]
    with pytest.raises(ValueError, match="item file"):
        retriever.load_gallery(str(tmp_path / "index"))


def test_exported_folder_gives_the_same_features(trained, tiny_data_root, tmp_path, retriever):
    from real20m.models.convert import convert_checkpoint
    convert_checkpoint(trained[0], tmp_path / "exported")
    retriever.tokenizer.save_pretrained(str(tmp_path / "exported" / "tokenizer"))
    exported = Retriever.from_checkpoint(str(tmp_path / "exported"), config=TINY, data=tiny_data_root)
    ids, feats = exported.encode_items(gallery_file(tiny_data_root), batch_size=4)
    written = load_features(trained[1])
    assert np.array_equal(ids, written.ids)
    np.testing.assert_allclose(feats, np.asarray(written.feats), atol=1e-6)
    np.testing.assert_allclose(exported.encode_queries(["红色条纹棉质T恤"]),
                               retriever.encode_queries(["红色条纹棉质T恤"]), atol=1e-6)


@pytest.mark.skipif(not FIXTURE.exists(), reason=f"release checkpoint fixture not found at {FIXTURE}")
def test_release_checkpoint_items_equal_the_evaluate_features(tiny_data_root, tmp_path):
    checkpoint, config = str(FIXTURE / "checkpoint_with_optim.pth.tar"), str(FIXTURE / "config.json")
    train_main(eval_argv(tiny_data_root, tmp_path / "eval", "--resume", checkpoint, "--release_config", config))
    release = Retriever.from_checkpoint(checkpoint, config=TINY, data=tiny_data_root,
                                        options={"run.release_config": config, "data.image_size": 32,
                                                 "data.batch_size": 4})
    assert release.cfg.data.compat == "original"
    ids, feats = release.encode_items(gallery_file(tiny_data_root), batch_size=4)
    written = load_features(str(tmp_path / "eval"))
    assert np.array_equal(ids, written.ids)
    np.testing.assert_allclose(feats, np.asarray(written.feats), atol=1e-6)


def test_query_file_errors_name_the_line(tmp_path):
    path = tmp_path / "queries.txt"
    path.write_text("1\t红色\n\nx\t蓝色\n", encoding="utf-8")
    with pytest.raises(QueryFileError, match=":3:"):
        read_queries(path)
    path.write_text("1\t红色\n1\t蓝色\n", encoding="utf-8")
    with pytest.raises(QueryFileError, match="already on line 1"):
        read_queries(path)


def test_embed_queries_then_evaluation_report_with_and_without_query_texts(trained, tiny_data_root, tmp_path):
    query_file = os.path.join(tiny_data_root, "test_file", "queries.txt")
    out = tmp_path / "query"
    code = retrieval_main(["--embed_queries", query_file, "--checkpoint", trained[0], "--out", str(out),
                           "--device", "cpu", "--config", TINY, "--data_root", tiny_data_root, "--workers", "0",
                           "--legacy_text_features"])
    assert code == 0
    features = load_features(str(out))
    qids, texts = read_queries(query_file)
    assert np.array_equal(features.ids, qids)
    assert np.array_equal(load_features(str(out / "features.feat")).ids, qids)
    gt = os.path.join(tiny_data_root, "test_file", "eval_gt_query2goods.txt")
    common = ["--query_features", str(out), "--gallery_features", trained[1], "--gt_file", gt, "--quiet",
              "--task", "query2goods", "--report", "--gallery_file", gallery_file(tiny_data_root),
              "--goods_img_root", os.path.join(tiny_data_root, "Real400K", "goods", "images")]
    # The query file as --query_texts: each query is shown as its text, with no image slot.
    evaluation.main(common + ["--output_dir", str(tmp_path / "titled"), "--query_texts", query_file])
    report = (tmp_path / "titled" / "report.html").read_text(encoding="utf-8")
    assert all(f"text query {qid}: {text}</h3>" in report for qid, text in zip(qids.tolist(), texts))
    assert "query frames" not in report
    metrics = json.loads((tmp_path / "titled" / "metrics.json").read_text())
    assert metrics["num_queries"] == len(qids) and metrics["gt_docs_missing_from_gallery"] == 0
    # No item file knows the qids: the report says so and does not fail.
    evaluation.main(common + ["--output_dir", str(tmp_path / "plain"), "--query_file", gallery_file(tiny_data_root)])
    assert "not in the item files" in (tmp_path / "plain" / "report.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("script", ["query2goods_evaluate.sh", "query2video_evaluate.sh"])
def test_query_scripts_help_writes_nothing(tmp_path, script):
    result = run_script(script, {"DATA_ROOT": str(tmp_path / "Dataset"), "OUTPUT_DIR": str(tmp_path / "out")},
                        "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "QUERY_FILE" in result.stdout and "--clip_length" in result.stdout
    assert os.listdir(tmp_path) == []


def test_query2goods_script_end_to_end(trained, tiny_data_root, tmp_path):
    env = {"DATA_ROOT": tiny_data_root, "OUTPUT_DIR": str(tmp_path / "out"), "CKPT": trained[0]}
    result = run_script("query2goods_evaluate.sh", env, "--workers", "0", "--batch_size", "4", cwd=tmp_path,
                        timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    results = tmp_path / "out" / "eval" / "query2goods"
    metrics = json.loads((results / "metrics.json").read_text())
    truth = load_ground_truth(os.path.join(tiny_data_root, "test_file", "eval_gt_query2goods.txt"))
    assert metrics["task"] == "query2goods" and metrics["num_queries"] == len(truth)
    assert 0.0 <= metrics["recall@1"] <= 1.0
    assert (results / "report.html").is_file() and (results / "recall.png").is_file()
    assert (results / "query" / "meta.json").is_file() and (results / "gallery" / "meta.json").is_file()
    # Each query shown as its text, with no (missing) image of its own; the gallery's thumbnails are there.
    report = (results / "report.html").read_text(encoding="utf-8")
    qids, texts = read_queries(os.path.join(tiny_data_root, "test_file", "queries.txt"))
    assert all(f"text query {qid}: {text}</h3>" in report for qid, text in zip(qids.tolist(), texts))
    assert "query frames" not in report and 'class="noimg"' not in report
    assert report.count("data:image/jpeg;base64,") > 0
    assert not (results / "query_items.txt").exists() and not (results / "query_text").exists()
    # The script's gallery features are those of the API.
    np.testing.assert_allclose(np.asarray(load_features(str(results / "gallery")).feats),
                               np.asarray(load_features(trained[1]).feats), atol=1e-6)
