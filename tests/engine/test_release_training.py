"""Training that starts from a checkpoint in the original release's layout, through the original's
own command line: the architecture comes from --release_config, else the checkpoint's shapes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from real20m.utils.checkpoint_io import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO.parent / "shared" / "fixtures"
RELEASE = FIXTURES / "upstream_ckpt_tiny"
DATA = FIXTURES / "upstream_train_step_tiny" / "data"

pytestmark = pytest.mark.skipif(not (RELEASE / "checkpoint.pth.tar").is_file() or not DATA.is_dir(),
                                reason=f"the release fixtures are not in {FIXTURES} (the project's shared folder)")


def original_training_flags(checkpoints: Path, *extra: str) -> list[str]:
    """train_run.sh's argument list, with the fixture's data, a 32-px image size and 2 steps."""
    roots = DATA / "Real400K"
    train = DATA / "train_file" / "mixed.txt"
    return [
        "--local_rank=0", "--embedding_size", "512", "--workers", "0", "--epochs", "10", "--decay_epochs", "3",
        "--batch_size", "5", "--lr", "0.01", "--save_freq", "50000", "--checkpoints", str(checkpoints),
        "--mixed_precision_training", "--finetune", "--train_file", str(train), "--cls_file", str(train),
        "--cls_num", "10", "--sample_info_file", str(train), "--goods_img_root", str(roots / "goods" / "images"),
        "--goods_text_root", str(roots / "goods" / "text"), "--photo_img_root", str(roots / "video" / "images"),
        "--photo_text_root", str(roots / "video" / "text"), "--frameid_root", str(roots / "video" / "frameid"),
        "--clip_length", "5", "--max_steps", "2", *extra]


def train(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = original_training_flags(tmp_path / "ckpts", "--output_dir", str(tmp_path), *extra)
    return subprocess.run([sys.executable, str(REPO / "main_cross_domain_emb.py"), *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_the_original_command_line_trains_from_a_release_checkpoint_of_another_size(tmp_path):
    done = train(tmp_path, "--pretrained", str(RELEASE / "checkpoint.pth.tar"),
                 "--release_config", str(RELEASE / "config.json"), "--image_size", "32")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"architecture from the release config {RELEASE / 'config.json'}" in (tmp_path / "log.txt").read_text()
    saved = load_checkpoint(tmp_path / "ckpts" / "last.pth.tar")
    assert saved["global_step"] == 2
    config = json.loads((RELEASE / "config.json").read_text())["clip_constructor_kwargs"]
    assert saved["model_cfg"]["text"]["num_hidden_layers"] == config["text_num_hidden_layers"]
    assert saved["model_cfg"]["vision"]["num_attention_heads"] == 2   # 64 wide / vision_head_width 32
    # Started from the release weights (a few Adam steps away from them), not from random ones.
    release = load_checkpoint(RELEASE / "checkpoint.pth.tar")["doc_fusion_model"]
    start = release["module.attention_pooling.projection.weight"]
    assert torch.allclose(saved["model"]["pooling.projection.weight"], start, atol=0.05)


def test_without_a_release_config_the_shapes_decide_and_the_log_says_so(tmp_path):
    done = train(tmp_path, "--pretrained", str(RELEASE / "checkpoint.pth.tar"), "--image_size", "32")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "architecture from the checkpoint's tensor shapes (ViT 2 x 64, text 2 x 64, embed 512" in \
        (tmp_path / "log.txt").read_text()
    assert load_checkpoint(tmp_path / "ckpts" / "last.pth.tar")["model_cfg"]["vision"]["image_size"] == 32


def test_a_release_config_that_does_not_fit_is_one_line_naming_the_first_tensor(tmp_path):
    config = json.loads((RELEASE / "config.json").read_text())
    config["clip_constructor_kwargs"]["text_hidden_size"] = 96
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(config))
    done = train(tmp_path, "--pretrained", str(RELEASE / "checkpoint.pth.tar"), "--release_config", str(wrong),
                 "--image_size", "32")
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {RELEASE / 'checkpoint.pth.tar'}: checkpoint does not fit the model: "
                           "first difference text.encoder.embeddings.word_embeddings.weight: "
                           "checkpoint (21128, 64) vs model (21128, 96)"), line
    assert "Traceback" not in done.stderr


def test_the_wrong_image_size_is_one_line_saying_what_to_set(tmp_path):
    done = train(tmp_path, "--pretrained", str(RELEASE / "checkpoint.pth.tar"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith(
        "the release checkpoint's vision tower takes 32-pixel images, and this run's --image_size is 224: "
        "set --image_size 32")
