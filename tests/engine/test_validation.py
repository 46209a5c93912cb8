"""--val_freq (Recall@K on the validation split, best.pth.tar) and the end-of-epoch save intervals."""
import json
import os

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from real20m.config import ConfigError
from real20m.engine.trainer import Trainer
from real20m.engine.validation import score_task
from real20m.utils.checkpoint_io import load_checkpoint

from tests.engine.test_trainer import SINGLE_CPU, tiny_cfg


def numbered_epochs(folder):
    return sorted(int(name.split("_")[1]) for name in os.listdir(folder) if name.startswith("checkpoint_"))


def assert_same_weights(a, b):
    for name, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[name]), name


def test_val_freq_logs_recall_and_keeps_the_best_checkpoint(tiny_data_root, tmp_path, caplog):
    caplog.set_level("INFO")
    trainer = Trainer(tiny_cfg(tiny_data_root, tmp_path, "--epochs", "3", "--val_freq", "2"), SINGLE_CPU)
    trainer.fit()

    # Epoch 2 (every 2nd) and epoch 3 (the last).
    history = [json.loads(line) for line in open(tmp_path / "val" / "history.jsonl")]
    assert [record["epoch"] for record in history] == [2, 3]
    for record in history:
        for task in ("video2goods", "goods2video"):
            # 8 items of each kind: K = 10 and beyond are not reported; 2 of 8 are relevant.
            assert 0.0 <= record[task]["recall@1"] <= record[task]["recall@5"] <= 1.0
            assert "recall@10" not in record[task]
            assert record[task]["chance_recall@5"] == pytest.approx(5 / 8)
        assert record["score"] == pytest.approx((record["video2goods"]["recall@5"]
                                                 + record["goods2video"]["recall@5"]) / 2)
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pth.tar")
    assert best["best_val_score"] == max(record["score"] for record in history)
    assert best["epoch"] in (2, 3) and set(best["val_metrics"]) == {"video2goods", "goods2video"}
    assert "validation at epoch 2 step" in caplog.text and "video2goods R@1" in caplog.text
    assert "best.pth.tar (validation score" in caplog.text

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"val/video2goods/recall@5", "val/goods2video/recall@1", "val/score"} <= set(events.Tags()["scalars"])


def test_validation_scores_what_the_evaluation_pipeline_scores(tiny_data_root, tmp_path):
    """The recorded metrics are those of the features the validator wrote (independent re-scoring)."""
    trainer = Trainer(tiny_cfg(tiny_data_root, tmp_path, "--epochs", "1", "--val_freq", "1"), SINGLE_CPU)
    trainer.fit()
    record = json.loads(open(tmp_path / "val" / "history.jsonl").readline())
    features = tmp_path / "val" / "features"
    rescored = score_task(str(features / "video_queries"), str(features / "goods_gallery"),
                          os.path.join(tiny_data_root, "val_file", "eval_gt_video2goods.txt"))
    assert rescored["recall@1"] == pytest.approx(record["video2goods"]["recall@1"])


def test_validation_does_not_change_what_is_trained(tiny_data_root, tmp_path):
    plain = Trainer(tiny_cfg(tiny_data_root, tmp_path / "plain", "--epochs", "2"), SINGLE_CPU)
    plain.fit()
    validated = Trainer(tiny_cfg(tiny_data_root, tmp_path / "validated", "--epochs", "2", "--val_freq", "1"),
                        SINGLE_CPU)
    validated.fit()
    assert_same_weights(plain, validated)


def test_val_freq_without_a_validation_split_names_the_folder(tiny_data_root, tmp_path):
    with pytest.raises(ConfigError, match="nowhere.*eval_gt_video2goods.txt"):
        tiny_cfg(tiny_data_root, tmp_path, "--val_freq", "1", "--val_dir", str(tmp_path / "nowhere"))


def test_save_epoch_freq_saves_every_nth_epoch_and_the_last_and_resumes_exactly(tiny_data_root, tmp_path):
    full = Trainer(tiny_cfg(tiny_data_root, tmp_path / "full", "--epochs", "3", "--save_epoch_freq", "2",
                            "--keep_checkpoints", "0"), SINGLE_CPU)
    full.fit()
    folder = tmp_path / "full" / "checkpoints"
    assert numbered_epochs(folder) == [2, 3]

    second = next(folder.glob("checkpoint_2_*.pth.tar"))
    resumed = Trainer(tiny_cfg(tiny_data_root, tmp_path / "resumed", "--epochs", "3", "--resume", str(second)),
                      SINGLE_CPU)
    resumed.fit()
    assert_same_weights(full, resumed)


@pytest.mark.parametrize("interval, expected", [("3600", [2]), ("0.000001", [1, 2])])
def test_save_interval_s_saves_at_epoch_ends_once_the_interval_has_passed(tiny_data_root, tmp_path, interval,
                                                                         expected):
    trainer = Trainer(tiny_cfg(tiny_data_root, tmp_path, "--epochs", "2", "--save_epoch_freq", "0",
                               "--save_interval_s", interval, "--keep_checkpoints", "0"), SINGLE_CPU)
    trainer.fit()
    assert numbered_epochs(tmp_path / "checkpoints") == expected
