"""--evaluate: features of a test file from our checkpoints, the untrained model and release checkpoints."""
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from real20m.cli.train import run
from real20m.datasets import load_items
from real20m.engine.trainer import Trainer
from real20m.evaluate.feature_io import load_features
from tests.engine.test_trainer import SINGLE_CPU, tiny_cfg

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO.parent / "shared" / "fixtures" / "upstream_ckpt_tiny"


def eval_argv(data_root, output_dir, *extra):
    return [*checkpoint_eval_argv(data_root, output_dir, *extra), "--image_size", "32"]


def checkpoint_eval_argv(data_root, output_dir, *extra):
    """Without --image_size: the YAML file's 64, unless a checkpoint's layer says otherwise."""
    return ["--config", str(REPO / "configs" / "tiny.yaml"), "--data_root", data_root, "--evaluate", "--test_file",
            os.path.join(data_root, "test_file", "goods_gallery.txt"), "--output_dir", str(output_dir),
            "--batch_size", "4", "--workers", "0", "--vocab_size", "300", *extra]


def test_untrained_baseline_is_identical_in_separate_runs(tiny_data_root, tmp_path):
    # The query and gallery sides of CKPT=init are embedded by two processes: both must build the
    # same vocabulary and the same random weights.
    run(eval_argv(tiny_data_root, tmp_path / "a", "--resume", "init"))
    run(eval_argv(tiny_data_root, tmp_path / "b", "--resume", "init"))
    first, second = load_features(str(tmp_path / "a")), load_features(str(tmp_path / "b"))
    assert np.array_equal(first.ids, second.ids)
    assert np.array_equal(np.asarray(first.feats), np.asarray(second.feats))


def test_trained_checkpoint_embeds_every_item_once_with_its_own_input_settings(tiny_data_root, tmp_path):
    Trainer(tiny_cfg(tiny_data_root, tmp_path / "run", "--max_steps", "2"), SINGLE_CPU).fit()
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pth.tar"
    # The YAML file says 64; the checkpoint's layer (32, what the ViT was built for) comes above it.
    count = run(checkpoint_eval_argv(tiny_data_root, tmp_path / "eval", "--resume", str(checkpoint),
                                     "--legacy_text_features"))

    expected = load_items(os.path.join(tiny_data_root, "test_file", "goods_gallery.txt")).pids
    features = load_features(str(tmp_path / "eval"))
    legacy = load_features(str(tmp_path / "eval" / "features.feat"))
    assert count == len(expected) and sorted(features.ids) == sorted(expected)
    assert np.allclose(np.linalg.norm(np.asarray(features.feats), axis=1), 1.0, atol=1e-5)
    assert np.array_equal(legacy.ids, features.ids)
    assert np.array_equal(np.asarray(legacy.feats), np.asarray(features.feats))
    written = yaml.safe_load((tmp_path / "eval" / "config.yaml").read_text(encoding="utf-8"))
    assert written["data"]["image_size"] == 32  # config.yaml records what the evaluation used


@pytest.mark.skipif(not FIXTURE.exists(), reason=f"release checkpoint fixture not found at {FIXTURE}")
def test_release_checkpoint_evaluates_through_resume_with_the_shipped_vocabulary(tiny_data_root, tmp_path):
    count = run(eval_argv(tiny_data_root, tmp_path / "eval", "--resume", str(FIXTURE / "checkpoint_with_optim.pth.tar"),
                          "--release_config", str(FIXTURE / "config.json")))
    written = yaml.safe_load((tmp_path / "eval" / "config.yaml").read_text(encoding="utf-8"))
    assert written["data"]["compat"] == "original"  # chosen for a release-layout checkpoint
    features = load_features(str(tmp_path / "eval"))
    assert count == len(load_items(os.path.join(tiny_data_root, "test_file", "goods_gallery.txt")).pids) \
        == len(features.ids)
    norms = np.linalg.norm(np.asarray(features.feats), axis=1)
    assert np.isfinite(np.asarray(features.feats)).all() and np.allclose(norms, 1.0, atol=1e-5)
