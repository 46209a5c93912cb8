from pathlib import Path

import pytest

from real20m.config import DEFAULT_LR_MULT, parse_config


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_yaml_values_are_overridden_by_the_command_line(tmp_path):
    config = write(tmp_path / "c.yaml", "batch_size: 16\nlr: 0.5\nmodel:\n  embed_dim: 64\n")
    cfg = parse_config(["--config", config, "--lr", "0.25"])
    assert cfg.batch_size == 16
    assert cfg.lr == 0.25
    assert cfg.model["embed_dim"] == 64


def test_original_flag_names_are_accepted_and_reach_the_model_section():
    cfg = parse_config(["--train_file", "t.txt", "--goods_img_root", "g", "--photo_text_root", "p",
                        "--clip_length", "3", "--embedding_size", "128", "--is_xbm",
                        "--mixed_precision_training", "--decay_epochs", "2", "--output_dir", "o"])
    assert (cfg.train_file, cfg.goods_img_root, cfg.photo_text_root) == ("t.txt", "g", "p")
    assert cfg.is_xbm and cfg.mixed_precision_training
    assert cfg.model["embed_dim"] == 128
    assert cfg.model["clip_length"] == 3
    assert cfg.checkpoints == "o/checkpoints"


def test_unknown_yaml_option_is_an_error_naming_the_file(tmp_path):
    config = write(tmp_path / "bad.yaml", "batch_sise: 16\n")
    with pytest.raises(ValueError, match="bad.yaml.*batch_sise"):
        parse_config(["--config", config])


def test_data_root_fills_the_standard_layout_without_overriding_given_paths(tmp_path):
    cfg = parse_config(["--data_root", "D", "--goods_img_root", "elsewhere"])
    assert cfg.goods_img_root == "elsewhere"
    assert cfg.photo_img_root == "D/Real400K/video/images"
    assert cfg.train_file == "D/train_file/train.txt"


def test_learning_rate_multipliers_merge_with_the_paper_defaults(tmp_path):
    config = write(tmp_path / "c.yaml", "lr_mult: {vision: 0.5}\n")
    cfg = parse_config(["--config", config])
    assert cfg.lr_mult == {**DEFAULT_LR_MULT, "vision": 0.5}


def test_shipped_configs_parse():
    tiny = parse_config(["--config", str(CONFIGS / "tiny.yaml")])
    paper = parse_config(["--config", str(CONFIGS / "paper.yaml")])
    assert tiny.model["vision"]["image_size"] == tiny.image_size
    assert (paper.batch_size, paper.epochs, paper.lr, paper.decay_epochs, paper.clip_length) == (80, 10, 0.01, 3, 5)
    assert paper.model["embed_dim"] == 512
