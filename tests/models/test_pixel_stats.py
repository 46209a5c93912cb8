"""Which pixel mean/std the model normalises with: the backbone's, ImageNet's, or the stored ones."""
import pytest

from real20m.config import parse_config
from real20m.models import build_model
from real20m.models.qcd import IMAGENET_MEAN, IMAGENET_STD, resolve_pixel_stats
from real20m.models.release_layout import model_config_from_release
from tests.engine.test_offline_pretrained import HF_MEAN, HF_STD, save_tiny_chinese_clip

from .conftest import VOCAB, deterministic_tiny_config

IMAGENET = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def test_a_from_scratch_tower_keeps_imagenet_statistics():
    assert parse_config(["--config", "tiny"]).model.pixel_stats == "backbone"
    assert build_model(deterministic_tiny_config(), vocab_size=VOCAB).pixel_stats == IMAGENET


def test_compat_original_means_imagenet_unless_told_otherwise():
    assert parse_config(["--config", "tiny", "--compat", "original"]).model.pixel_stats == "imagenet"
    assert parse_config(["--config", "tiny", "--compat", "original", "--pixel_stats", "backbone"]
                        ).model.pixel_stats == "backbone"


def test_release_layouts_and_configs_without_the_key_are_imagenet():
    # Release checkpoints and those saved before the option existed were trained on ImageNet statistics.
    assert "pixel_stats" not in model_config_from_release(None)
    assert resolve_pixel_stats(model_config_from_release(None), vision=None) == IMAGENET


def test_stored_statistics_rebuild_exactly_and_bad_ones_are_refused():
    stats = {"mean": [0.5, 0.25, 0.125], "std": [0.3, 0.2, 0.1]}
    model = build_model(deterministic_tiny_config(pixel_stats=stats), vocab_size=VOCAB)
    assert model.pixel_stats == stats and model.resolved_config()["pixel_stats"] == stats
    assert model.pixel_std.flatten().tolist() == pytest.approx(stats["std"])
    with pytest.raises(ValueError, match="3 means and 3 positive stds"):
        resolve_pixel_stats({"pixel_stats": {"mean": [0.5] * 3, "std": [0.0, 1.0, 1.0]}}, vision=None)
    with pytest.raises(ValueError, match="must be one of"):
        resolve_pixel_stats({"pixel_stats": "clip"}, vision=None)


@pytest.mark.parametrize("compat, expected", [("default", {"mean": HF_MEAN, "std": HF_STD}), ("original", IMAGENET)])
def test_a_pretrained_backbone_brings_its_image_processor_statistics_except_under_compat(compat, expected, tmp_path):
    folder = tmp_path / "tiny_chinese_clip"
    save_tiny_chinese_clip(folder)
    cfg = parse_config(["--config", "tiny", "--backbone", "chinese_clip", "--compat", compat, "--pretrained", str(folder),
                        "--image_size", "32"])
    model = build_model(cfg.model.architecture(), vocab_size=21128)
    assert model.pixel_stats == expected
    assert model.resolved_config()["pixel_stats"] == expected


def test_a_pretrained_folder_without_an_image_processor_config_falls_back_to_imagenet(tmp_path):
    folder = tmp_path / "tiny_chinese_clip"
    save_tiny_chinese_clip(folder)
    (folder / "preprocessor_config.json").unlink()
    cfg = parse_config(["--config", "tiny", "--backbone", "chinese_clip", "--pretrained", str(folder), "--image_size", "32"])
    model = build_model(cfg.model.architecture(), vocab_size=21128)
    assert model.pixel_stats == IMAGENET


def test_a_timm_weights_file_brings_its_architectures_data_config_and_rebuilds_without_it(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = timm.create_model("test_resnet", num_classes=0)
    weights = tmp_path / "test_resnet.safetensors"
    save_file(source.state_dict(), str(weights))
    cfg = deterministic_tiny_config(backbone="timm", timm_name="test_resnet", pretrained=str(weights), caption=None)
    model = build_model(cfg, vocab_size=VOCAB)
    torch.testing.assert_close(model.vision.encoder.conv1[0].weight, source.conv1[0].weight)
    assert model.pixel_stats == {"mean": [0.5] * 3, "std": [0.5] * 3}   # timm's data config of test_resnet
    weights.unlink()
    rebuilt = build_model(model.resolved_config(), vocab_size=VOCAB)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.pixel_stats == model.pixel_stats
