"""The shell entry points as a user runs them: train.sh, then both evaluation scripts."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--image_size", "32", "--workers", "0", "--batch_size", "4", "--vocab_size", "300"]


def run_script(name, env, *args, cwd, timeout=600):
    """``sh REPO/name args`` with this interpreter as PYTHON and ``env`` on top of the environment."""
    environment = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["sh", str(REPO / name), *args], capture_output=True, text=True, timeout=timeout,
                          env=environment, cwd=cwd)


@pytest.mark.parametrize("script", ["train.sh", "video2goods_evaluate.sh", "goods2video_evaluate.sh"])
def test_help_prints_the_options_and_writes_nothing(tmp_path, script):
    result = run_script(script, {"DATA_ROOT": str(tmp_path / "Dataset"), "OUTPUT_DIR": str(tmp_path / "out")},
                        "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--clip_length" in result.stdout and "(default: 5)" in result.stdout
    assert os.listdir(tmp_path) == []


def test_train_then_both_evaluations_write_their_results(tiny_data_root, tmp_path):
    env = {"DATA_ROOT": tiny_data_root, "OUTPUT_DIR": str(tmp_path / "out"), "EPOCHS": "1"}
    trained = run_script("train.sh", env, *SMALL, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "out" / "checkpoints" / "last.pth.tar").is_file()
    assert (tmp_path / "out" / "config.yaml").is_file()
    for task in ("video2goods", "goods2video"):
        evaluated = run_script(f"{task}_evaluate.sh", env, "--workers", "0", "--batch_size", "4", cwd=tmp_path)
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]
        results = tmp_path / "out" / "eval" / task
        metrics = json.loads((results / "metrics.json").read_text())
        assert 0.0 <= metrics["recall@1"] <= 1.0 and metrics["num_queries"] > 0
        assert (results / "report.html").is_file() and (results / "recall.png").is_file()
        assert (results / "query" / "config.yaml").is_file() and (results / "gallery" / "meta.json").is_file()
