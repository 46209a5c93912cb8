"""Conversion to our format (safetensors + config.json) and loading it back."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from real20m.models import build_model, load_weights_into
from real20m.models.convert import embed_reference_inputs, save_converted
from real20m.models.release_layout import model_config_from_release
from real20m.utils.checkpoint_io import load_checkpoint

from .conftest import VOCAB, deterministic_tiny_config, make_batch
from .exported import load_exported

TOOL = Path(__file__).resolve().parents[2] / "tools" / "convert_checkpoint.py"


def _tool_main():
    spec = importlib.util.spec_from_file_location("convert_checkpoint_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_release_conversion_round_trips(release_fixture, tmp_path):
    out = tmp_path / "converted"
    assert _tool_main()([str(release_fixture / "checkpoint_with_optim.pth.tar"), str(out),
                         "--release-config", str(release_fixture / "config.json")]) == 0
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json"}
    config = json.loads((out / "config.json").read_text())
    assert config["use_title_mask"] is False and config["pretrained"] is None

    model = load_exported(out)
    with np.load(release_fixture / "reference_io.npz") as npz:
        reference = dict(npz)
    produced = embed_reference_inputs(model, reference, clip_length=5)
    for name in ("video_doc_emb", "goods_doc_emb", "video_title_emb", "extra_padded_title_emb"):
        np.testing.assert_allclose(produced[name], reference[name], atol=1e-5, err_msg=name)


def test_our_checkpoint_converts_and_reloads_identically(tmp_path):
    torch.manual_seed(0)
    cfg = deterministic_tiny_config()
    model = build_model(cfg, vocab_size=VOCAB).eval()
    # DDP-wrapped state dicts carry a `module.` prefix; the loader accepts both
    state = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"model": state, "model_cfg": cfg, "epoch": 3}, tmp_path / "last.pth.tar")

    assert _tool_main()([str(tmp_path / "last.pth.tar"), str(tmp_path / "converted")]) == 0
    reloaded = load_exported(tmp_path / "converted")
    batch = make_batch()
    with torch.no_grad():
        expected, got = model(batch), reloaded(batch)
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
        assert "caption_logits" in expected  # the caption decoder is converted too


def test_converted_config_rebuilds_without_the_original_config(tmp_path):
    model = build_model(deterministic_tiny_config(caption=None, use_title_mask=False), vocab_size=VOCAB)
    save_converted(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["text"]["vocab_size"] == VOCAB and config["caption"] is None
    assert load_exported(tmp_path).use_title_mask is False


def test_missing_converted_file_is_named(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_exported(tmp_path)


def test_release_weights_load_into_a_model_with_caption_decoder(release_fixture):
    cfg = model_config_from_release(json.loads((release_fixture / "config.json").read_text()))
    cfg["caption"] = {"n_layer": 1, "n_head": 2, "n_embd": 32}
    model = build_model(cfg)
    summary = load_weights_into(model, load_checkpoint(release_fixture / "checkpoint.pth.tar"))
    assert "caption decoder keeps its initialisation" in summary
    torch.testing.assert_close(model.frame.positional_embedding,
                               load_checkpoint(release_fixture / "checkpoint.pth.tar")["doc_fusion_model"][
                                   "module.video_attention_pooling.positional_embedding"])


def test_our_checkpoint_with_wrong_shape_is_named(tmp_path):
    model = build_model(deterministic_tiny_config(), vocab_size=VOCAB)
    state = model.state_dict()
    state["pooling.projection.weight"] = torch.zeros(2, 10)
    with pytest.raises(ValueError, match=r"pooling.projection.weight: checkpoint \(2, 10\) vs model \(2, 1024\)"):
        load_weights_into(model, {"model": state})


@pytest.mark.parametrize("flag,content,reason", [("--model-config", "[1", "not valid YAML/JSON"),
                                                 ("--release-config", None, "cannot read it"),
                                                 ("--model-config", "- a list", "expected a mapping")])
def test_bad_config_file_is_one_line_naming_it(tmp_path, capsys, flag, content, reason):
    config = tmp_path / "cfg.yaml"
    if content is not None:
        config.write_text(content)
    with pytest.raises(SystemExit) as stopped:
        _tool_main()([str(tmp_path / "any.pth.tar"), str(tmp_path / "out"), flag, str(config)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag} {config}: {reason}") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
