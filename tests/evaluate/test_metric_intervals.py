"""Evaluation a reader can trust: bootstrap intervals of Recall@K and hit@K, the median rank of the first
ground-truth item, the distractor curve, and metrics.json's earlier keys left exactly as they were."""
import json
import re

import numpy as np
import pytest
from PIL import Image

from real20m.evaluate.bootstrap import BootstrapSettings
from real20m.evaluate.cli import main as evaluate_main
from real20m.evaluate.distractor_curve import DistractorCurveSettings, gallery_steps
from real20m.evaluate.feature_io import write_legacy_features
from real20m.evaluate.item_lookup import ItemView
from real20m.evaluate.metric_registry import METRICS, Display, register_per_query_metric
from real20m.evaluate.metrics import RetrievalMetrics, compute_metrics
from real20m.evaluate.report import FoundItems, write_report

from tests.evaluate.feature_folders import write_one_shard_folder

KS = (1, 5, 10)
# 0-based rank of each query's only GT doc in a depth-10 list; None: not retrieved.
FIRST_GT_RANKS = (0, 2, 5, None, 1, 0, 7, None, 3, 0)

# metrics.json of the evaluation in _write_evaluation_inputs before intervals, median rank and the distractor
# curve existed (search and timings aside): every one of these values must still be written exactly so.
EARLIER_METRICS_JSON = (
    '{"recall@1": 0.2727272727272727, "hit@1": 0.36363636363636365, "map@1": 0.36363636363636365, '
    '"chance_recall@1": 0.023863636363636365, "chance_hit@1": 0.03636363636361637, "recall@5": 0.4090909090909091, '
    '"hit@5": 0.6363636363636364, "map@5": 0.31212121212121213, "chance_recall@5": 0.11931818181818182, '
    '"chance_hit@5": 0.17599067599066134, "recall@10": 0.5909090909090909, "hit@10": 0.8181818181818182, '
    '"map@10": 0.34494949494949495, "chance_recall@10": 0.23863636363636365, "chance_hit@10": 0.3374125874125641, '
    '"recall@20": 0.7727272727272727, "hit@20": 0.9090909090909091, "map@20": 0.36520007770007773, '
    '"chance_recall@20": 0.4772727272727273, "chance_hit@20": 0.6165501165501074, "num_gallery": 40, '
    '"duplicate_gallery_ids": 0, "gt_docs_missing_from_gallery": 1, "num_queries": 11, "queries_without_gt": 1, '
    '"gt_queries_missing_from_query_set": 0, "retrieved_depth": 20, "task": "retrieval"}')
EARLIER_SEARCH_KEYS = ["index", "nprobe", "params", "shards", "loaded_index", "topk", "chunk_size", "query_chunk",
                       "save_topk", "use_gpu", "device", "num_gpus", "device_note", "faiss_version", "faiss_build"]
EARLIER_TABLE = """\
     K   Recall@K      hit@K      mAP@K  chance R@K
     1     0.2727     0.3636     0.3636      0.0239
     5     0.4091     0.6364     0.3121      0.1193
    10     0.5909     0.8182     0.3449      0.2386
    20     0.7727     0.9091     0.3652      0.4773
num_queries: 11
num_gallery: 40
queries_without_gt: 1
gt_queries_missing_from_query_set: 0
gt_docs_missing_from_gallery: 1
duplicate_gallery_ids: 0"""


def _fixed_ranking(repeats):
    """``repeats`` copies of the FIRST_GT_RANKS pattern: query q's GT doc is 1000 + q; the other results are
    ids from 5000 on, no query's ground truth."""
    pattern = FIRST_GT_RANKS * repeats
    retrieved = np.arange(len(pattern) * 10, dtype=np.int64).reshape(len(pattern), 10) + 5000
    for query, rank in enumerate(pattern):
        if rank is not None:
            retrieved[query, rank] = 1000 + query
    ground_truth = {query: [1000 + query] for query in range(len(pattern))}
    gallery = np.concatenate([np.arange(len(pattern)) + 1000, retrieved.ravel()[retrieved.ravel() >= 5000]])
    return np.arange(len(pattern)), retrieved, ground_truth, gallery


def _scores(repeats, settings=BootstrapSettings()):
    query_ids, retrieved, ground_truth, gallery = _fixed_ranking(repeats)
    metrics = RetrievalMetrics(ground_truth, gallery, KS, settings)
    for start in range(0, len(query_ids), 7):   # in chunks, as the evaluation streams them
        metrics.update(query_ids[start:start + 7], retrieved[start:start + 7])
    return metrics.result()


def test_the_interval_covers_the_point_estimate_and_narrows_with_more_queries():
    once, four_times = _scores(1), _scores(4)
    for name in ("recall", "hit"):
        for k in KS:
            assert once.at(name)[k] == pytest.approx(four_times.at(name)[k])   # the same per-query pattern
            for scores in (once, four_times):
                low, high = scores.intervals.at(name)[k]
                assert low <= scores.at(name)[k] <= high and low < high
            width_once = np.subtract(*once.intervals.at(name)[k][::-1])
            width_four_times = np.subtract(*four_times.intervals.at(name)[k][::-1])
            # The standard error halves with 4x the queries; the percentile interval follows it.
            assert width_four_times < 0.75 * width_once


def test_the_interval_is_the_percentile_bootstrap_of_the_per_query_values_and_is_seeded():
    scores = _scores(1, BootstrapSettings(samples=500, seed=3))
    hit_at_5 = np.array([rank is not None and rank < 5 for rank in FIRST_GT_RANKS], dtype=float)
    draws = np.random.default_rng(3).integers(0, len(hit_at_5), size=(500, len(hit_at_5)))
    reference = np.percentile(hit_at_5[draws].mean(axis=1), [2.5, 97.5])
    assert scores.intervals.at("hit")[5] == pytest.approx(tuple(reference))
    assert _scores(1, BootstrapSettings(samples=500, seed=3)).intervals.bounds == scores.intervals.bounds
    assert _scores(1, BootstrapSettings(samples=500, seed=4)).intervals.bounds != scores.intervals.bounds
    assert _scores(1, BootstrapSettings(samples=0)).intervals is None


def test_median_rank_of_the_first_ground_truth_item_by_hand():
    # First GT ranks (1-based) 1, 3, 6, 11 (beyond the depth of 10), 2, 1, 8, 11, 4, 1: sorted
    # 1 1 1 2 3 4 6 8 11 11, median (3 + 4) / 2.
    assert _scores(1).median_first_gt_rank == 3.5
    # A query without GT is not counted; a second GT doc further down does not change the first rank.
    metrics = compute_metrics([1, 2, 3], np.array([[7, 5, 6], [9, 8, 7], [5, 6, 7]]), {1: [6, 5], 2: [4]},
                              np.array([4, 5, 6, 7, 8, 9]), ks=(1, 3))
    assert metrics.median_first_gt_rank == (2 + 4) / 2   # query 2's doc 4 is not in the top 3: rank 4


def _write_evaluation_inputs(folder):
    """Eleven video queries with ground truth (one also with a doc the gallery lacks), one without, 40 goods."""
    rng = np.random.default_rng(7)
    gallery = rng.standard_normal((40, 8)).astype(np.float32)
    first_gt = (3 * np.arange(12)) % 40
    queries = (gallery[first_gt] + 1.5 * rng.standard_normal((12, 8))).astype(np.float32)
    write_legacy_features(str(folder / "q.feat"), np.arange(12) + 100, queries)
    write_legacy_features(str(folder / "g.feat"), np.arange(40) + 500, gallery)
    ground_truth = {}
    with open(folder / "gt.txt", "w") as f:
        for q in range(11):
            docs = [500 + int(first_gt[q])] + ([999] if q == 10 else [500 + (5 * q + 1) % 40] if q % 2 else [])
            ground_truth[100 + q] = docs
            f.write(f"video/images/{100 + q}/{100 + q}_0.jpg\t"
                    + ",".join(f"goods/images/{d}/{d}.jpg" for d in docs) + "\n")
    return queries, gallery, ground_truth


def _evaluate(folder, *flags):
    evaluate_main(["--query_features", str(folder / "q.feat"), "--gallery_features", str(folder / "g.feat"),
                   "--gt_file", str(folder / "gt.txt"), "--output_dir", str(folder / "eval"), "--topk", "20",
                   "--quiet", *flags])
    return json.loads((folder / "eval" / "metrics.json").read_text())


def test_metrics_json_keeps_every_earlier_key_and_value_and_adds_the_new_ones(tmp_path, capsys):
    _write_evaluation_inputs(tmp_path)
    saved = _evaluate(tmp_path, "--distractor_curve")
    earlier = json.loads(EARLIER_METRICS_JSON)
    assert list(saved)[:len(earlier) + 2] == [*earlier, "search", "timings"]
    assert {key: json.dumps(saved[key]) for key in earlier} == {key: json.dumps(earlier[key]) for key in earlier}
    assert list(saved["search"]) == EARLIER_SEARCH_KEYS
    assert list(saved)[len(earlier) + 2:] == ["median_first_gt_rank", "bootstrap", "intervals", "distractor_curve",
                                              "distractor_seed"]
    assert saved["bootstrap"] == {"samples": 1000, "seed": 0, "level": 0.95}
    assert list(saved["intervals"]) == [f"{name}@{k}" for k in (1, 5, 10, 20) for name in ("recall", "hit")]
    for key, (low, high) in saved["intervals"].items():
        assert low <= saved[key] <= high

    printed = capsys.readouterr().out
    assert printed.startswith(EARLIER_TABLE + "\n")
    added = printed[len(EARLIER_TABLE) + 1:].splitlines()
    assert added[0] == f"median_first_gt_rank: {saved['median_first_gt_rank']:g} (21 = not in the top 20)"
    assert added[1] == "bootstrap 95% intervals (1000 resamples of the queries, seed 0):"
    low, high = saved["intervals"]["hit@10"]
    assert added[2].split() == ["K", "Recall@K", "hit@K"] and added[5].split()[-2:] == [f"[{low:.4f},", f"{high:.4f}]"]

    with Image.open(tmp_path / "eval" / "recall.png") as plot:
        assert plot.size == (1200, 400)   # a second panel: the distractor curve


def test_intervals_off_and_another_seed(tmp_path):
    _write_evaluation_inputs(tmp_path)
    default = _evaluate(tmp_path)
    assert _evaluate(tmp_path)["intervals"] == default["intervals"]   # seeded: the same again
    other_seed = _evaluate(tmp_path, "--bootstrap_seed", "1", "--bootstrap_samples", "200")
    assert other_seed["bootstrap"] == {"samples": 200, "seed": 1, "level": 0.95}
    assert other_seed["intervals"] != default["intervals"]
    off = _evaluate(tmp_path, "--bootstrap_samples", "0")
    assert "intervals" not in off and "bootstrap" not in off and "distractor_curve" not in off
    assert off["median_first_gt_rank"] == default["median_first_gt_rank"]
    with Image.open(tmp_path / "eval" / "recall.png") as plot:
        assert plot.size == (600, 400)


def _brute_force_recall_at_10(queries, gallery, ground_truth, rows):
    """Mean over the queries with GT of |GT in the top 10 of gallery rows ``rows``| / |GT|, plain numpy."""
    ids = (np.arange(40) + 500)[rows]
    recalls = []
    for query_row, query_id in enumerate(range(100, 112)):
        if query_id in ground_truth:
            order = np.argsort(-(gallery[rows] @ queries[query_row]), kind="stable")[:10]
            docs = set(ground_truth[query_id])
            recalls.append(len(docs & set(ids[order].tolist())) / len(docs))
    return float(np.mean(recalls))


def test_the_distractor_curve_matches_a_brute_force_search_of_each_step(tmp_path):
    queries, gallery, ground_truth = _write_evaluation_inputs(tmp_path)
    saved = _evaluate(tmp_path, "--distractor_curve", "--distractor_seed", "5")
    steps = gallery_steps(np.arange(40) + 500, ground_truth, np.arange(100, 112), DistractorCurveSettings(seed=5))
    gt_rows = np.flatnonzero(np.isin(np.arange(40) + 500, [d for docs in ground_truth.values() for d in docs]))
    assert len(gt_rows) == 14 and steps[0].tolist() == gt_rows.tolist()   # first point: the GT items alone
    assert steps[-1].tolist() == list(range(40))                          # last point: the whole gallery
    assert [len(rows) for rows in steps] == [14, 14 + 6, 14 + 13, 14 + 20, 40]   # round(f * 26) distractors
    assert all(set(small) <= set(large) for small, large in zip(steps, steps[1:]))
    curve = saved["distractor_curve"]
    assert [point["distractor_fraction"] for point in curve] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [point["gallery_size"] for point in curve] == [len(rows) for rows in steps]
    for point, rows in zip(curve, steps):
        assert point["recall@10"] == pytest.approx(_brute_force_recall_at_10(queries, gallery, ground_truth, rows))
    assert curve[-1]["recall@10"] == saved["recall@10"] and curve[0]["recall@10"] > curve[-1]["recall@10"]
    assert saved["distractor_seed"] == 5
    other = gallery_steps(np.arange(40) + 500, ground_truth, np.arange(100, 112), DistractorCurveSettings(seed=6))
    assert other[1].tolist() != steps[1].tolist()


def test_the_distractor_curve_streams_a_sharded_folder_in_chunks_to_the_same_points(tmp_path):
    queries, gallery, _ = _write_evaluation_inputs(tmp_path)
    in_memory = _evaluate(tmp_path, "--distractor_curve")["distractor_curve"]
    write_one_shard_folder(tmp_path / "queries", [(np.arange(12) + 100, queries)])
    write_one_shard_folder(tmp_path / "gallery", [(np.arange(23) + 500, gallery[:23]),
                                                  (np.arange(23, 40) + 500, gallery[23:])])
    evaluate_main(["--query_features", str(tmp_path / "queries"), "--gallery_features", str(tmp_path / "gallery"),
                   "--gt_file", str(tmp_path / "gt.txt"), "--output_dir", str(tmp_path / "streamed"), "--topk", "20",
                   "--quiet", "--distractor_curve", "--chunk_size", "6", "--query_chunk", "4"])
    streamed = json.loads((tmp_path / "streamed" / "metrics.json").read_text())
    assert streamed["distractor_curve"] == in_memory


@pytest.fixture
def reciprocal_rank_per_query():
    """RR@K per query (1 / rank of the first GT doc, 0 beyond K), registered from this file alone."""
    @register_per_query_metric("test_rr", ks=(10,), display=Display("RR@K", in_report=True))
    def reciprocal_rank(hits, k):
        first = hits.first_hit_rank(not_found=k + 1)
        return np.where(first <= k, 1.0 / first, 0.0)
    yield
    del METRICS["test_rr"]


def test_a_registered_per_query_metric_gets_an_interval_in_metrics_json_and_the_table(
        reciprocal_rank_per_query, tmp_path, capsys):
    queries, gallery, ground_truth = _write_evaluation_inputs(tmp_path)
    saved = _evaluate(tmp_path)
    ranked = np.argsort(-(queries[:11] @ gallery.T), axis=1, kind="stable")[:, :10] + 500
    expected = np.mean([next((1 / (rank + 1) for rank, pid in enumerate(row) if pid in ground_truth[100 + q]), 0.0)
                        for q, row in enumerate(ranked)])
    assert saved["test_rr@10"] == pytest.approx(expected)
    low, high = saved["intervals"]["test_rr@10"]
    assert low < expected < high
    interval_rows = capsys.readouterr().out.split("seed 0):\n")[1].splitlines()
    assert interval_rows[0].split() == ["K", "Recall@K", "hit@K", "RR@K"]
    assert interval_rows[3].split()[-2:] == [f"[{low:.4f},", f"{high:.4f}]"]


def test_the_report_shows_each_interval_beside_its_metric(tmp_path):
    image = tmp_path / "img.jpg"
    Image.new("RGB", (8, 8)).save(image)
    query_ids, retrieved, ground_truth, _ = _fixed_ranking(1)
    scores = _scores(1)
    intervals = scores.intervals
    found = FoundItems(query_ids, retrieved, ground_truth, scores)
    text = open(write_report(str(tmp_path), "video2goods", found,
                             lambda pid: ItemView(pid, "goods", f"item {pid}", (str(image),)))).read()
    assert "<th>K</th><th>Recall@K</th><th>95% interval</th><th>hit@K</th><th>95% interval</th><th>mAP@K</th>" in text
    low, high = intervals.at("hit")[10]
    row_10 = re.search(r"<tr><td>10</td>(.*?)</tr>", text).group(1)
    assert f"<td>{scores['hit@10']:.4f}</td><td>[{low:.4f}, {high:.4f}]</td>" in row_10
    assert "median_first_gt_rank: 3.5" in text
