"""A local weights folder names its backbone in its own config.json."""
import json

import pytest

from real20m.config import ConfigError, parse_config
from real20m.models.backbone_folder import BackboneFolderError, backbone_of_folder


def folder_with(tmp_path, description) -> str:
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "config.json").write_text(description if isinstance(description, str) else json.dumps(description))
    return str(folder)


@pytest.mark.parametrize("description, backbone", [
    ({"model_type": "chinese_clip", "text_config": {}}, "chinese_clip"),
    ({"model_type": "clip"}, "clip"),
    ({"architecture": "resnet50d", "num_classes": 0, "pretrained_cfg": {"tag": "a1_in1k"}}, "timm"),
])
def test_the_folder_description_names_the_backbone(tmp_path, description, backbone):
    assert backbone_of_folder(folder_with(tmp_path, description)) == backbone


@pytest.mark.parametrize("description, message", [
    ({"model_type": "bert"}, r"model_type 'bert': no backbone reads it"),
    ("{not json", r"config.json: line 1: not JSON"),
    ([1, 2], r"not a model description"),
])
def test_a_folder_no_backbone_reads_is_refused_naming_it(tmp_path, description, message):
    with pytest.raises(BackboneFolderError, match=message):
        backbone_of_folder(folder_with(tmp_path, description))


def test_a_folder_without_config_json_is_refused(tmp_path):
    with pytest.raises(BackboneFolderError, match="no config.json"):
        backbone_of_folder(str(tmp_path))


def test_the_tiny_config_takes_the_folder_backbone_and_says_so(tmp_path):
    folder = folder_with(tmp_path, {"model_type": "chinese_clip"})
    cfg = parse_config(["--config", "tiny", "--pretrained", folder])
    assert cfg.model.backbone == "chinese_clip" and cfg.model.pretrained == folder
    assert cfg.notes == (f"backbone chinese_clip, read from {folder}/config.json",)


def test_a_timm_folder_replaces_the_configured_timm_model(tmp_path):
    folder = folder_with(tmp_path, {"architecture": "test_resnet", "pretrained_cfg": {}})
    cfg = parse_config(["--config", "tiny", "--pretrained", folder])
    assert (cfg.model.backbone, cfg.model.timm_name, dict(cfg.model.timm_args)) == ("timm", None, {})
    assert "replaces timm_name resnet10t" in cfg.notes[0]


@pytest.mark.parametrize("flag", [["--backbone", "timm"], ["--model.backbone", "timm"]])
def test_an_explicit_backbone_that_contradicts_the_folder_is_one_error(tmp_path, flag):
    folder = folder_with(tmp_path, {"model_type": "clip"})
    with pytest.raises(ConfigError, match=f"{folder} holds a clip model .* but --backbone is timm"):
        parse_config(["--config", "tiny", "--pretrained", folder, *flag])


def test_a_hub_name_is_not_probed():
    cfg = parse_config(["--pretrained", "OFA-Sys/chinese-clip-vit-base-patch16"])
    assert cfg.model.backbone == "chinese_clip" and cfg.notes == ()
