import json
import os
import sys
from collections import namedtuple

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import bench_scale  # noqa: E402

SMALL = ["--gallery", "6000", "--queries", "50", "--dim", "16", "--clusters", "6", "--index", "IVF16,Flat",
         "--nprobe", "1,16", "--subset", "2000", "--shard_rows", "2500", "--chunk_rows", "1000",
         "--train_size", "3000"]


def test_small_run_reports_the_tradeoff_and_leaves_nothing_behind(tmp_path, capsys):
    bench_scale.main(SMALL + ["--workdir", str(tmp_path)])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["gallery"] == 6000 and result["peak_rss_mb"] > 0 and result["build_s"] >= 0
    assert [row["nprobe"] for row in result["tradeoff"]] == [1, 16]
    assert result["tradeoff"][1]["recall_vs_exact@100"] >= 0.999   # every list probed: exact
    assert result["nprobe"] in (1, 16)
    assert os.listdir(tmp_path) == []


def test_refuses_to_start_without_the_disk_space(tmp_path, capsys, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(bench_scale.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 10**9, 10**9))
    with pytest.raises(SystemExit) as exit_info:
        bench_scale.main(["--gallery", "20000000", "--workdir", str(tmp_path)])
    assert exit_info.value.code == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert "has 1.0 GB free, this run needs 21.2 GB" in error
    assert os.listdir(tmp_path) == []
