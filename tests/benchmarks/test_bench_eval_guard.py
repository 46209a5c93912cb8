import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import bench_eval_guard  # noqa: E402

TINY = ["--text_rows", "300", "--queries", "64", "--gallery", "600", "--dim", "16", "--topk", "20", "--repeats", "1"]


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_reports_ratios_against_their_limits(capsys):
    assert bench_eval_guard.main(TINY + ["--reader_limit", "1e6", "--search_limit", "1e6"]) == 0
    result = _last_json(capsys)
    assert result["ok"] is True and result["reader_limit"] == 1e6 and result["search_limit"] == 1e6
    assert result["reader_ratio"] > 0 and result["search_ratio"] > 0
    assert set(result["best_s"]) == {"read_bytes", "reader", "gemm", "search"}


def test_a_ratio_past_its_limit_fails_the_run(capsys):
    assert bench_eval_guard.main(TINY + ["--reader_limit", "1e-6"]) == 1
    result = _last_json(capsys)
    assert result["ok"] is False and result["reader_ratio"] > result["reader_limit"]
