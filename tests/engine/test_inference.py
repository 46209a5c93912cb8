"""--evaluate: features of a test file from our checkpoints, the untrained model and release checkpoints."""
import os
from pathlib import Path

import numpy as np
import pytest

from real20m.config import parse_config
from real20m.datasets import load_items
from real20m.engine.inference import write_features
from real20m.engine.trainer import Trainer
from real20m.evaluate.feature_io import load_features
from tests.engine.test_trainer import SINGLE_CPU, tiny_cfg

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO.parent / "shared" / "fixtures" / "upstream_ckpt_tiny"


def eval_cfg(data_root, output_dir, *extra):
    return parse_config(["--config", str(REPO / "configs" / "tiny.yaml"), "--data_root", data_root,
                         "--evaluate", "--test_file", os.path.join(data_root, "test_file", "goods_gallery.txt"),
                         "--output_dir", str(output_dir), "--batch_size", "4", "--workers", "0",
                         "--image_size", "32", "--vocab_size", "300", *extra])


def test_untrained_baseline_is_identical_in_separate_runs(tiny_data_root, tmp_path):
    # The query and gallery sides of CKPT=init are embedded by two processes: both must build the
    # same vocabulary and the same random weights.
    write_features(eval_cfg(tiny_data_root, tmp_path / "a", "--resume", "init"))
    write_features(eval_cfg(tiny_data_root, tmp_path / "b", "--resume", "init"))
    first, second = load_features(str(tmp_path / "a")), load_features(str(tmp_path / "b"))
    assert np.array_equal(first.ids, second.ids)
    assert np.array_equal(np.asarray(first.feats), np.asarray(second.feats))


def test_trained_checkpoint_embeds_every_item_once_with_its_own_input_settings(tiny_data_root, tmp_path):
    Trainer(tiny_cfg(tiny_data_root, tmp_path / "run", "--max_steps", "2"), SINGLE_CPU).fit()
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pth.tar"
    # --image_size 64 on the command line: the checkpoint's 32 must win, the ViT was built for it.
    cfg = eval_cfg(tiny_data_root, tmp_path / "eval", "--resume", str(checkpoint), "--legacy_text_features",
                   "--image_size", "64")
    count = write_features(cfg)

    expected = load_items(cfg.data.test_file).pids
    features = load_features(str(tmp_path / "eval"))
    legacy = load_features(str(tmp_path / "eval" / "features.feat"))
    assert count == len(expected) and sorted(features.ids) == sorted(expected)
    assert np.allclose(np.linalg.norm(np.asarray(features.feats), axis=1), 1.0, atol=1e-5)
    assert np.array_equal(legacy.ids, features.ids)
    assert np.array_equal(np.asarray(legacy.feats), np.asarray(features.feats))
    import yaml
    written = yaml.safe_load((tmp_path / "eval" / "config.yaml").read_text(encoding="utf-8"))
    assert written["data"]["image_size"] == 32  # config.yaml records what the evaluation used


@pytest.mark.skipif(not FIXTURE.exists(), reason=f"release checkpoint fixture not found at {FIXTURE}")
def test_release_checkpoint_evaluates_through_resume_with_the_shipped_vocabulary(tiny_data_root, tmp_path):
    cfg = eval_cfg(tiny_data_root, tmp_path / "eval", "--resume", str(FIXTURE / "checkpoint_with_optim.pth.tar"),
                   "--release_config", str(FIXTURE / "config.json"))
    assert cfg.data.compat == "original"  # chosen for a release-layout checkpoint
    count = write_features(cfg)
    features = load_features(str(tmp_path / "eval"))
    assert count == len(load_items(cfg.data.test_file).pids) == len(features.ids)
    norms = np.linalg.norm(np.asarray(features.feats), axis=1)
    assert np.isfinite(np.asarray(features.feats)).all() and np.allclose(norms, 1.0, atol=1e-5)
