"""The backbone registry: what each shipped family says about itself, and registration rules."""
import pytest

from real20m.config import DataConfig, parse_config
from real20m.factory import pretrained_tokenizer_name
from real20m.models.backbones import BACKBONES, UnknownBackboneError, get_backbone, register_backbone


def test_the_shipped_families_and_their_rules():
    assert {"chinese_clip", "clip", "timm"} <= set(BACKBONES)   # (other tests may register more)
    vit, clip, timm = (get_backbone(name) for name in ("chinese_clip", "clip", "timm"))
    assert (vit.fixed_input_size, clip.fixed_input_size, timm.fixed_input_size) == (True, True, False)
    assert (vit.default_text_pooling, clip.default_text_pooling, timm.default_text_pooling) == ("cls", "eos", "cls")
    assert timm.folder_replaces == ("timm_name", "timm_args") and vit.folder_replaces == ()


def test_a_pretrained_dual_encoder_brings_its_tokenizer_and_a_timm_backbone_none():
    data = DataConfig()
    assert pretrained_tokenizer_name(data, parse_config(["--pretrained", "hub/model"]).model) == "hub/model"
    timm = parse_config(["--config", "tiny", "--pretrained", "hub/timm-model"]).model
    assert pretrained_tokenizer_name(data, timm) is None


def test_a_weights_file_is_the_timm_towers_but_the_whole_model_for_a_dual_encoder(tmp_path):
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"")
    timm = parse_config(["--config", "tiny", "--pretrained", str(weights)])
    assert (timm.model.pretrained, timm.run.init_weights) == (str(weights), None)
    vit = parse_config(["--backbone", "chinese_clip", "--pretrained", str(weights)])
    assert (vit.model.pretrained, vit.run.init_weights) == (None, str(weights))


def test_a_name_is_registered_once_and_an_unknown_one_is_one_line_listing_them():
    with pytest.raises(ValueError, match="backbone 'timm' is already registered"):
        register_backbone(get_backbone("timm"))
    with pytest.raises(UnknownBackboneError, match=r"unknown model.backbone 'vgg'; expected one of \['chinese_clip'"):
        get_backbone("vgg")
