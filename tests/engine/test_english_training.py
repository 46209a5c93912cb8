"""Training on the release's English variant, as a user runs it: the synthetic dataset written with
``--english`` (the train file's 4th field, ``<pid>_eng.txt`` texts), ``--query_language en`` and the
CLIP backbone, through ``main_cross_domain_emb.py``."""
import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

from real20m.utils.checkpoint_io import load_checkpoint
from tests.models.conftest import TINY_CLIP

REPO = Path(__file__).resolve().parents[2]


def test_two_steps_on_the_english_synthetic_data_with_the_clip_backbone(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    subprocess.run([sys.executable, "-m", "real20m.datasets.synthetic", "--out", str(data), "--seed", "0",
                    "--english", "--num-queries", "16", "--num-test-queries", "4", "--num-val-queries", "0",
                    "--goods-per-query", "2", "--videos-per-query", "2", "--image-size", "32"],
                   check=True, capture_output=True, timeout=300)
    command = [sys.executable, str(REPO / "main_cross_domain_emb.py"), "--config", "tiny", "--data_root", str(data),
               "--output_dir", str(run), "--batch_size", "4", "--workers", "0", "--image_size", "32",
               "--vocab_size", "300", "--max_steps", "2", "--print_freq", "1", "--query_language", "en", *TINY_CLIP]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    assert f"training on {data / 'train_file' / 'train.txt'}" in result.stdout + result.stderr
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pth.tar")
    assert checkpoint["global_step"] == 2
    assert checkpoint["config"]["data"]["query_language"] == "en"
    assert checkpoint["model_cfg"]["backbone"] == "clip"
    # The vocabulary was trained on the English queries and texts only: a Chinese query or title
    # would have put CJK characters into it.
    with open(os.path.join(run, "tokenizer", "tokenizer.json"), encoding="utf-8") as handle:
        vocabulary = list(json.load(handle)["model"]["vocab"])
    assert "dress" in vocabulary or "backpack" in vocabulary
    assert not [token for token in vocabulary if any(unicodedata.name(c, "").startswith("CJK") for c in token)]

    # Evaluating the checkpoint alone reads the English texts it was trained on.
    evaluate = [sys.executable, str(REPO / "main_cross_domain_emb.py"), "--evaluate", "--resume",
                str(run / "checkpoints" / "last.pth.tar"), "--data_root", str(data),
                "--output_dir", str(tmp_path / "eval"), "--test_file", str(data / "test_file" / "goods_gallery.txt"),
                "--batch_size", "4", "--workers", "0"]
    result = subprocess.run(evaluate, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "using the checkpoint's query_language = en (not zh)" in result.stdout + result.stderr
