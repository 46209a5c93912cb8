"""A new vision backbone is one registry entry: registered here, from this file alone, it trains
through the training entry point, embeds both sides of both item tasks through --evaluate, and
its features are evaluated into metrics.json."""
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from real20m.cli.train import main as train_main
from real20m.config import build_parser, parse_config
from real20m.datasets import load_items
from real20m.evaluate.cli import main as evaluation_main
from real20m.evaluate.feature_io import load_features
from real20m.models.backbones import Backbone, register_backbone
from real20m.models.towers import VisionTower

WIDTH = 12


@dataclass(frozen=True, kw_only=True)
class TwoLayerCNN(Backbone):
    """Two strided convolutions and a global average: the smallest vision tower that learns."""

    def build_vision(self, model_cfg: dict, embed_dim: int) -> VisionTower:
        encoder = nn.Sequential(nn.Conv2d(3, WIDTH // 2, 3, stride=2, padding=1), nn.ReLU(),
                                nn.Conv2d(WIDTH // 2, WIDTH, 3, stride=2, padding=1), nn.ReLU(),
                                nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return VisionTower(encoder, nn.Linear(WIDTH, embed_dim, bias=False))


register_backbone(TwoLayerCNN(name="two_layer_cnn"))

TASKS = {  # task -> (query items, gallery items, ground truth), as the two evaluation scripts have them
    "video2goods": ("video_queries.txt", "goods_gallery.txt", "eval_gt_video2goods.txt"),
    "goods2video": ("goods_gallery.txt", "video_queries.txt", "eval_gt_goods2video.txt"),
}


def numbers_in(value):
    if isinstance(value, dict):
        return [number for item in value.values() for number in numbers_in(item)]
    if isinstance(value, list):
        return [number for item in value for number in numbers_in(item)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


@pytest.fixture(scope="module")
def trained(tiny_data_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("two_layer_cnn")
    train_main(["--config", "tiny", "--backbone", "two_layer_cnn", "--data_root", tiny_data_root,
                "--output_dir", str(run), "--workers", "0", "--batch_size", "4", "--image_size", "32",
                "--vocab_size", "300", "--max_steps", "2"])
    return run


def test_the_registered_backbone_is_listed_and_checked_by_the_configuration():
    assert "two_layer_cnn" in build_parser().format_help()
    cfg = parse_config(["--config", "tiny", "--backbone", "two_layer_cnn"])
    # A vision-only family: its tower takes any input size, and its text tower starts from scratch.
    assert "image_size" not in cfg.model.architecture()["vision"]
    with pytest.raises(ValueError, match=r"unknown model.backbone 'two_layer_cnns'; expected one of \[.*'two_layer_cnn'"):
        parse_config(["--config", "tiny", "--model.backbone", "two_layer_cnns"])


def test_it_trains_through_the_training_entry_point(trained):
    checkpoint = torch.load(trained / "checkpoints" / "last.pth.tar", map_location="cpu", weights_only=True)
    assert checkpoint["model_cfg"]["backbone"] == "two_layer_cnn" and checkpoint["global_step"] == 2
    assert checkpoint["model"]["vision.encoder.2.weight"].shape == (WIDTH, WIDTH // 2, 3, 3)
    assert checkpoint["model"]["vision.projection.weight"].shape == (512, WIDTH)
    # Its parameters are in the model's "vision" LR group, at the tiny config's multiplier (1.0).
    groups = {group["name"]: group for group in checkpoint["optimizer"]["param_groups"]}
    assert groups["vision"]["initial_lr"] == pytest.approx(1e-3) and len(groups["vision"]["params"]) == 5


@pytest.mark.parametrize("task", sorted(TASKS))
def test_both_item_tasks_embed_and_evaluate(trained, tiny_data_root, task):
    tests = os.path.join(tiny_data_root, "test_file")
    out = trained / "eval" / task
    for side, items in zip(("query", "gallery"), TASKS[task][:2]):
        # Only the checkpoint describes the model: no --config, no --backbone.
        train_main(["--evaluate", "--resume", str(trained / "checkpoints" / "last.pth.tar"), "--data_root",
                    tiny_data_root, "--test_file", os.path.join(tests, items), "--output_dir", str(out / side),
                    "--batch_size", "4", "--workers", "0"])
        features = load_features(str(out / side))
        assert features.feats.shape == (len(load_items(os.path.join(tests, items)).pids), 512)
        np.testing.assert_allclose(np.linalg.norm(np.asarray(features.feats, dtype=np.float64), axis=1), 1.0,
                                   atol=1e-4)
    evaluation_main(["--query_features", str(out / "query"), "--gallery_features", str(out / "gallery"),
                     "--gt_file", os.path.join(tests, TASKS[task][2]), "--output_dir", str(out), "--task", task,
                     "--quiet"])
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    values = numbers_in(metrics)
    assert values and all(math.isfinite(value) for value in values)
