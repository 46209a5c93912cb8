"""Train from a pretrained backbone folder, delete the folder, then evaluate and convert offline.

The backbones are tiny random models saved the way real ones are published: a Chinese-CLIP
model in the Hugging Face format (save_pretrained, with a tokenizer and a preprocessor_config.json)
and a timm model in timm's own folder layout (save_for_hf). Both state pixel statistics that are
not ImageNet's, so the tests can tell that the backbone's statistics are the ones trained with,
stored in the checkpoint and used again by evaluation and conversion, with HF_HUB_OFFLINE=1 and
the backbone folder gone.
"""
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from real20m.datasets import load_items
from real20m.engine.trainer import Trainer
from real20m.models.qcd import IMAGENET_MEAN
from real20m.utils.checkpoint_io import load_checkpoint
from tests.engine.test_trainer import SINGLE_CPU, tiny_cfg

REPO = Path(__file__).resolve().parents[2]
HF_MEAN, HF_STD = [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]
TIMM_MEAN, TIMM_STD = [0.25, 0.35, 0.45], [0.55, 0.65, 0.75]


def save_tiny_chinese_clip(folder: Path) -> None:
    from transformers import BertTokenizerFast, ChineseCLIPConfig, ChineseCLIPImageProcessor, ChineseCLIPModel

    from real20m.assets import CHINESE_BERT_VOCAB_DIR

    tokenizer = BertTokenizerFast(vocab_file=os.path.join(CHINESE_BERT_VOCAB_DIR, "vocab.txt"))
    config = ChineseCLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           image_size=32, patch_size=16),
        projection_dim=512)
    torch.manual_seed(0)
    ChineseCLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ChineseCLIPImageProcessor(image_mean=HF_MEAN, image_std=HF_STD, size={"shortest_edge": 32},
                              crop_size={"height": 32, "width": 32}).save_pretrained(folder)


def save_tiny_timm(folder: Path) -> None:
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10)
    save_for_hf(model, folder, data_config={"mean": TIMM_MEAN, "std": TIMM_STD}, safe_serialization=True)


BACKBONES = {
    "chinese_clip": (save_tiny_chinese_clip, ("--backbone", "chinese_clip"), HF_MEAN, HF_STD),
    # The folder names its architecture: the tiny config's own timm model and arguments are cleared.
    "timm": (save_tiny_timm, ("--backbone", "timm", "--model.timm_name", "null", "--model.timm_args", "{}"),
             TIMM_MEAN, TIMM_STD),
}


def evaluate_and_convert(checkpoint: str, data_root: str, out: str) -> dict:
    """Run in a fresh process with HF_HUB_OFFLINE=1 (the hub library reads it at import): the
    features of both sides of video2goods through main_cross_domain_emb.py --evaluate, Recall@K
    through the evaluation entry, and tools/convert_checkpoint.py. Returns what the test checks."""
    import runpy

    from real20m import model_source
    from real20m.evaluate.cli import main as evaluation_main
    from tests.models.exported import load_exported

    used = []
    load = model_source.TrainingCheckpoint.load

    def recording_load(source, cfg, is_main=True):
        model, tokenizer = load(source, cfg, is_main)
        used.append({"mean": model.pixel_mean.flatten().tolist(), "std": model.pixel_std.flatten().tolist()})
        return model, tokenizer

    model_source.TrainingCheckpoint.load = recording_load
    tests = os.path.join(data_root, "test_file")
    for side, items in (("query", "video_queries.txt"), ("gallery", "goods_gallery.txt")):
        # Nothing but the checkpoint describes the model: no --config, no --pretrained.
        sys.argv = ["main_cross_domain_emb.py", "--evaluate", "--resume", checkpoint, "--data_root", data_root,
                    "--test_file", os.path.join(tests, items), "--output_dir", os.path.join(out, side),
                    "--batch_size", "4", "--workers", "0"]
        runpy.run_path(str(REPO / "main_cross_domain_emb.py"), run_name="__main__")
    evaluation_main(["--query_features", os.path.join(out, "query"), "--gallery_features",
                     os.path.join(out, "gallery"), "--gt_file", os.path.join(tests, "eval_gt_video2goods.txt"),
                     "--output_dir", os.path.join(out, "metrics"), "--task", "video2goods", "--quiet"])
    converted = os.path.join(out, "converted")
    sys.argv = ["convert_checkpoint.py", checkpoint, converted]
    try:
        runpy.run_path(str(REPO / "tools" / "convert_checkpoint.py"), run_name="__main__")
    except SystemExit as stop:
        assert stop.code in (0, None), stop.code
    with open(os.path.join(out, "metrics", "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    model = load_exported(converted)
    return {"used": used, "metrics": metrics, "converted": model.pixel_stats,
            "converted_buffers": {"mean": model.pixel_mean.flatten().tolist()}}


def run_offline(checkpoint, data_root, out, hub_cache) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache), "PYTHONPATH": str(REPO)}
    code = ("import json, sys; from tests.engine.test_offline_pretrained import evaluate_and_convert; "
            "print('RESULT ' + json.dumps(evaluate_and_convert(*sys.argv[1:])))")
    done = subprocess.run([sys.executable, "-c", code, str(checkpoint), data_root, str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_a_checkpoint_trained_from_a_backbone_folder_evaluates_and_converts_offline_without_it(
        backbone, tiny_data_root, tmp_path, caplog):
    save, flags, mean, std = BACKBONES[backbone]
    folder = tmp_path / f"tiny_{backbone}"
    save(folder)
    real20m_logger = logging.getLogger("real20m")
    real20m_logger.addHandler(caplog.handler)   # the package logger may not propagate (setup_logging)
    caplog.set_level(logging.INFO, logger="real20m")
    try:
        trainer = Trainer(tiny_cfg(tiny_data_root, tmp_path / "run", *flags, "--pretrained", str(folder),
                                   "--max_steps", "2"), SINGLE_CPU)
        trainer.fit()
    finally:
        real20m_logger.removeHandler(caplog.handler)
    assert f"local folder {folder}" in caplog.text   # the one line saying where the backbone came from
    # Trained with the backbone's statistics, and the checkpoint stores them explicitly.
    assert trainer.model.pixel_stats == {"mean": mean, "std": std}
    assert trainer.model.pixel_mean.flatten().tolist() == pytest.approx(mean)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pth.tar"
    stored = load_checkpoint(checkpoint)["model_cfg"]
    assert stored["pixel_stats"] == {"mean": mean, "std": std} and stored["pretrained"] is None
    shutil.rmtree(folder)

    result = run_offline(checkpoint, tiny_data_root, tmp_path / "offline", tmp_path / "empty-hub-cache")
    assert len(result["used"]) == 2   # the query side and the gallery side
    for used in result["used"]:
        assert used["mean"] == pytest.approx(mean) and used["std"] == pytest.approx(std)
        assert used["mean"] != pytest.approx(list(IMAGENET_MEAN))
    metrics, tests = result["metrics"], os.path.join(tiny_data_root, "test_file")
    assert metrics["num_queries"] == len(load_items(os.path.join(tests, "video_queries.txt")).pids)
    assert metrics["num_gallery"] == len(load_items(os.path.join(tests, "goods_gallery.txt")).pids)
    assert 0.0 <= metrics["recall@1"] <= metrics["recall@5"] <= 1.0
    assert result["converted"] == {"mean": mean, "std": std}
    assert result["converted_buffers"]["mean"] == pytest.approx(mean)


def test_training_from_an_uncached_hub_name_offline_stops_with_one_line(tiny_data_root, tmp_path):
    # The backbone's tokenizer is loaded first: it must fail the same way as the weights would.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-hub-cache")}
    done = subprocess.run([sys.executable, str(REPO / "main_cross_domain_emb.py"), "--config", "tiny",
                           "--data_root", tiny_data_root, "--output_dir", str(tmp_path / "run"), "--workers", "0",
                           "--backbone", "chinese_clip", "--pretrained", "someone/not-cached-model"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-4000:]
    assert done.stderr.strip().splitlines() == [
        "error: model.pretrained 'someone/not-cached-model' is not a folder and not in the local Hugging Face "
        "cache, and HF_HUB_OFFLINE=1: download it once with network access, or give a local folder"]


def test_train_sh_with_a_chinese_clip_folder_and_the_default_config_then_both_tasks_offline(tiny_data_root,
                                                                                            tmp_path):
    from tests.test_shell_entry_points import run_script

    folder = tmp_path / "tiny_chinese_clip"
    save_tiny_chinese_clip(folder)
    env = {"DATA_ROOT": tiny_data_root, "OUTPUT_DIR": str(tmp_path / "out")}
    # No --backbone: the folder's config.json selects it over the default (tiny, timm) config.
    trained = run_script("train.sh", env, "--pretrained", str(folder), "--image_size", "32", "--max_steps", "2",
                         "--workers", "0", "--batch_size", "4", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    log = (tmp_path / "out" / "log.txt").read_text()
    assert f"configuration: backbone chinese_clip, read from {folder}/config.json" in log
    shutil.rmtree(folder)
    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-hub-cache")}
    for task in ("video2goods", "goods2video"):
        evaluated = run_script(f"{task}_evaluate.sh", offline, "--workers", "0", "--batch_size", "4", cwd=tmp_path)
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]
        metrics = json.loads((tmp_path / "out" / "eval" / task / "metrics.json").read_text())
        assert metrics["num_queries"] > 0 and 0.0 <= metrics["recall@1"] <= 1.0
