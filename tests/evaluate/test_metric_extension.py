"""A metric registered from this file alone (mean reciprocal rank) reaches metrics.json, the printed
table, the HTML report (evaluation.py's ``main``) and validation (``real20m-train``'s ``main``)."""
import json
import re

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from real20m.evaluate.cli import main as evaluate_main
from real20m.evaluate.metric_registry import METRICS, Display, register_metric

from tests.evaluate.test_report_cli import _item_file_dataset

NAME = "test_mrr"


@pytest.fixture
def reciprocal_rank_metric():
    """MRR@K: the mean over queries of 1 / rank of the first GT doc, 0 when none is in the top K."""
    @register_metric(NAME, ks=(1, 10), display=Display("MRR@K", in_report=True, in_plot=True, log_label="MRR"))
    def reciprocal_rank(hits, k):
        first_hit = np.unique(hits.rows, return_index=True)[1]   # hits are sorted by row, then rank
        ranks = hits.ranks[first_hit]
        return (1.0 / (ranks[ranks < k] + 1)).sum()
    yield
    del METRICS[NAME]


def brute_force_mrr(query_feats, gallery_feats, gallery_pids, relevant, k):
    ranked = np.asarray(gallery_pids)[np.argsort(-(query_feats @ gallery_feats.T), axis=1)[:, :k]]
    return np.mean([next((1 / (rank + 1) for rank, pid in enumerate(row) if pid in docs), 0.0)
                    for row, docs in zip(ranked, relevant)])


def test_a_registered_metric_is_in_metrics_json_the_table_and_the_report(reciprocal_rank_metric, tmp_path, capsys):
    feats = _item_file_dataset(tmp_path, n_gallery=12)
    evaluate_main(["--query_features", str(tmp_path / "q.feat"), "--gallery_features", str(tmp_path / "g.feat"),
                   "--gt_file", str(tmp_path / "gt.txt"), "--output_dir", str(tmp_path / "eval"), "--topk", "10",
                   "--quiet", "--report", "--query_file", str(tmp_path / "queries.txt"),
                   "--gallery_file", str(tmp_path / "gallery.txt"),
                   "--goods_img_root", str(tmp_path / "goods" / "images"),
                   "--photo_img_root", str(tmp_path / "video" / "images")])

    expected = {k: brute_force_mrr(feats[:2], feats[2:], range(10, 22), [{10}, {11, 12}], k) for k in (1, 10)}
    # The first GT doc ranks 8th for query 1 and 4th for query 2.
    assert expected == {1: 0.0, 10: pytest.approx((1 / 8 + 1 / 4) / 2)}
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved[f"{NAME}@1"] == pytest.approx(expected[1]) and saved[f"{NAME}@10"] == pytest.approx(expected[10])
    assert f"{NAME}@5" not in saved                       # only the Ks it registered
    assert list(saved)[:6] == ["recall@1", "hit@1", "map@1", "chance_recall@1", "chance_hit@1", f"{NAME}@1"]

    table = capsys.readouterr().out.splitlines()
    assert table[0] == f"{'K':>6} {'Recall@K':>10} {'hit@K':>10} {'mAP@K':>10} {'chance R@K':>11} {'MRR@K':>10}"
    row_10 = next(line.split() for line in table if line.split()[:1] == ["10"])
    assert row_10[1] == f"{saved['recall@10']:.4f}" and row_10[-1] == f"{expected[10]:.4f}"

    report = (tmp_path / "eval" / "report.html").read_text(encoding="utf-8")
    assert "<th>mAP@K</th><th>MRR@K</th></tr>" in report
    cells = re.search(r"<tr><td>10</td>(.*?)</tr>", report).group(1)
    assert cells.endswith(f"<td>{expected[10]:.4f}</td>")


def test_a_registered_metric_is_scored_and_logged_by_validation(reciprocal_rank_metric, tiny_data_root, tmp_path):
    from real20m.cli.train import main as train_main
    train_main(["--config", "tiny", "--data_root", tiny_data_root, "--output_dir", str(tmp_path), "--image_size", "32",
                "--batch_size", "4", "--workers", "0", "--vocab_size", "300", "--max_steps", "1", "--val_freq", "1"])

    record = json.loads((tmp_path / "val" / "history.jsonl").read_text().splitlines()[0])
    for task in ("video2goods", "goods2video"):
        # At K = 1 the reciprocal rank is 1 exactly when the top result is relevant: hit@1.
        assert record[task][f"{NAME}@1"] == pytest.approx(record[task]["hit@1"])
        assert f"{NAME}@10" not in record[task]   # 8 items per gallery: K = 10 is beyond the depth
    log = (tmp_path / "log.txt").read_text(encoding="utf-8")
    assert f"MRR@1 {record['video2goods'][f'{NAME}@1']:.4f}" in log
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    logged = events.Scalars(f"val/goods2video/{NAME}@1")
    assert [event.value for event in logged] == [pytest.approx(record["goods2video"][f"{NAME}@1"])]
