"""The paper's release layout: exact reproduction of the original embeddings and strict key mapping."""
import json

import numpy as np
import pytest
import torch

from real20m.models import (
    WeightMismatchError,
    build_model_from_release_config,
    is_release_checkpoint,
    load_weights_into,
)
from real20m.models.convert import check_fixture, check_state_dict, embed_reference_inputs, main
from real20m.models.release_layout import ReleaseLayoutError, map_release_checkpoint
from real20m.utils.checkpoint_io import load_checkpoint

TOLERANCE = 1e-5


def _release_model(fixture):
    return build_model_from_release_config(json.loads((fixture / "config.json").read_text()))


@pytest.mark.parametrize("checkpoint", ["checkpoint.pth.tar", "checkpoint_with_optim.pth.tar"])
def test_reference_outputs_are_reproduced(release_fixture, checkpoint):
    diffs = check_fixture(release_fixture, checkpoint)
    expected = {f"{kind}_{name}" for kind in ("video", "goods")
                for name in ("title_emb", "frame_emb", "t_emb", "v_emb", "doc_emb", "pool_weights")}
    assert expected | {"extra_padded_title_emb"} == set(diffs)
    assert max(diffs.values()) <= TOLERANCE, diffs


def test_cli_writes_arrays_and_exits_zero(release_fixture, tmp_path, capsys):
    out = tmp_path / "out.npz"
    assert main(["--check", str(release_fixture), "--out", str(out)]) == 0
    diffs = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert diffs["video_doc_emb"] <= TOLERANCE
    with np.load(out) as produced, np.load(release_fixture / "reference_io.npz") as reference:
        assert produced["goods_frame_emb"].shape == (2, 512)
        # title_emb is the unnormalised projection
        np.testing.assert_allclose(produced["video_title_emb"], reference["video_title_emb"], atol=TOLERANCE)
        assert not np.allclose(np.linalg.norm(produced["video_title_emb"], axis=1), 1.0)


def test_cli_fails_when_outputs_differ(release_fixture, tmp_path, capsys):
    (tmp_path / "config.json").write_text((release_fixture / "config.json").read_text())
    checkpoint = load_checkpoint(release_fixture / "checkpoint.pth.tar")
    checkpoint["doc_fusion_model"]["module.attention_pooling.projection.bias"][0] += 1.0  # shifts the softmax
    torch.save(checkpoint, tmp_path / "checkpoint.pth.tar")
    reference = dict(np.load(release_fixture / "reference_io.npz"))
    np.savez(tmp_path / "reference_io.npz", **reference)
    assert main(["--check", str(tmp_path)]) == 1
    assert "video_doc_emb" in capsys.readouterr().err


def test_vision_tower_comes_from_state_dict_not_the_text_copy(release_fixture):
    checkpoint = load_checkpoint(release_fixture / "checkpoint.pth.tar")
    for key, value in checkpoint["doc_text_model"].items():
        if key.startswith("module.clip_model.visual."):
            value.add_(1.0)  # the unused copy must not influence anything
    model = _release_model(release_fixture)
    load_weights_into(model, checkpoint)
    with np.load(release_fixture / "reference_io.npz") as npz:
        reference = dict(npz)
    produced = embed_reference_inputs(model, reference, clip_length=5)
    np.testing.assert_allclose(produced["video_frame_emb"], reference["video_frame_emb"], atol=TOLERANCE)


def test_every_tensor_is_consumed_or_explicitly_ignored(release_fixture):
    checkpoint = load_checkpoint(release_fixture / "checkpoint_with_optim.pth.tar")
    assert is_release_checkpoint(checkpoint)
    state, report = map_release_checkpoint(checkpoint)
    assert report.mapped == {"state_dict": 32, "doc_fusion_model": 15, "doc_text_model": 38}
    assert report.duplicates_verified == 38
    assert sum(report.ignored.values()) == 109 - 38 - 38
    assert report.ignored_top_level == ["epoch", "global_step", "text_optimizer"]
    assert "vision.encoder.encoder.layers.1.self_attn.k_proj.weight" in state


def test_missing_key_is_named(release_fixture):
    checkpoint = load_checkpoint(release_fixture / "checkpoint.pth.tar")
    del checkpoint["state_dict"]["module.visual_model.transformer.resblocks.1.mlp.c_fc.bias"]
    with pytest.raises(WeightMismatchError, match=r"missing keys: \['vision.encoder.encoder.layers.1.mlp.fc1.bias'\]"):
        load_weights_into(_release_model(release_fixture), checkpoint)


def test_changed_shape_is_named(release_fixture):
    checkpoint = load_checkpoint(release_fixture / "checkpoint.pth.tar")
    checkpoint["doc_fusion_model"]["module.video_attention_pooling.positional_embedding"] = torch.zeros(1, 4, 512)
    expected = (r"module.video_attention_pooling.positional_embedding -> "
                r"frame.positional_embedding: checkpoint \(1, 4, 512\) vs model \(1, 5, 512\)")
    with pytest.raises(WeightMismatchError, match=expected):
        load_weights_into(_release_model(release_fixture), checkpoint)


def test_unexpected_key_is_named(release_fixture):
    checkpoint = load_checkpoint(release_fixture / "checkpoint.pth.tar")
    checkpoint["doc_text_model"]["module.clip_model.bert.pooler.dense.weight"] = torch.zeros(64, 64)
    expected = r"unexpected keys: \['doc_text_model: module.clip_model.bert.pooler.dense.weight \(as text.encoder"
    with pytest.raises(WeightMismatchError, match=expected):
        load_weights_into(_release_model(release_fixture), checkpoint)


def test_unknown_section_key_is_named(release_fixture):
    checkpoint = load_checkpoint(release_fixture / "checkpoint.pth.tar")
    checkpoint["state_dict"]["module.visual_model.attnpool.weight"] = torch.zeros(3)
    with pytest.raises(ReleaseLayoutError, match=r"state_dict: module.visual_model.attnpool.weight"):
        map_release_checkpoint(checkpoint)


def test_duplicates_that_differ_are_rejected(release_fixture):
    checkpoint = load_checkpoint(release_fixture / "checkpoint.pth.tar")
    key = "module.text_model.encoder.layer.0.output.dense.bias"
    checkpoint["doc_text_model"][key] = checkpoint["doc_text_model"][key] + 1.0  # breaks the shared storage
    with pytest.raises(ReleaseLayoutError, match="values differ"):
        map_release_checkpoint(checkpoint)


def test_full_size_layout_maps_onto_the_paper_configuration(release_fixture):
    keys = json.loads((release_fixture / "full_size_keys.json").read_text())
    checkpoint = {section: {name: torch.empty(shape, device="meta") for name, shape in tensors.items()}
                  for section, tensors in keys["sections"].items()}
    with torch.device("meta"):  # ~190M parameters: shapes only, no memory
        model = build_model_from_release_config(None)
    state, report = map_release_checkpoint(checkpoint)
    check_state_dict(model, state, report.sources)  # raises on any missing/unexpected/shape
    assert report.mapped == {"state_dict": 152, "doc_fusion_model": 15, "doc_text_model": 198}
    assert sum(p.numel() for p in model.parameters()) == (
        keys["param_counts"]["state_dict"]["unique_parameters"]
        + keys["param_counts"]["doc_fusion_model"]["unique_parameters"]
        + keys["param_counts"]["doc_text_model"]["unique_parameters"]
        - keys["param_counts"]["state_dict"]["unique_parameters"] - 1  # unused vision copy + logit scale
    )
    aliases = keys["aliases"]["doc_text_model"]
    assert report.duplicates_verified == len(aliases)


def test_not_a_checkpoint_is_rejected(tiny_model):
    with pytest.raises(WeightMismatchError, match="neither a Real20M release"):
        load_weights_into(tiny_model, {"epoch": 1, "weights": {}})


def test_the_shapes_of_the_tiny_checkpoint_give_its_sizes(release_fixture):
    from real20m.models.release_layout import release_config_from_shapes

    config = json.loads((release_fixture / "config.json").read_text())["clip_constructor_kwargs"]
    inferred = release_config_from_shapes(load_checkpoint(release_fixture / "checkpoint.pth.tar"))
    sizes = ("embed_dim", "image_resolution", "vision_layers", "vision_width", "vision_patch_size", "vocab_size",
             "text_hidden_size", "text_num_hidden_layers", "text_intermediate_size", "text_max_position_embeddings",
             "text_type_vocab_size")
    assert {name: inferred["clip_constructor_kwargs"][name] for name in sizes} == {name: config[name] for name in sizes}
    assert inferred["fusion"]["frame_transformer"] == {"T": 5, "embed_dim": 512}


def test_the_shapes_of_the_full_size_release_give_the_papers_architecture(release_fixture):
    from real20m.models.release_layout import model_config_from_release, release_architecture

    listed = json.loads((release_fixture / "full_size_keys.json").read_text())["sections"]
    checkpoint = {section: {key: torch.empty(shape, device="meta") for key, shape in keys.items()}
                  for section, keys in listed.items()}
    architecture, how = release_architecture(checkpoint, None, None)
    assert architecture == model_config_from_release(None)   # ViT-B/16 + RoBERTa-base, 12 heads each
    assert how.startswith("the checkpoint's tensor shapes (ViT 12 x 768, text 12 x 768, embed 512")


def test_a_first_difference_leads_the_mismatch_message(release_fixture):
    checkpoint = load_checkpoint(release_fixture / "checkpoint.pth.tar")
    del checkpoint["state_dict"]["module.visual_model.transformer.resblocks.1.mlp.c_fc.bias"]
    with pytest.raises(WeightMismatchError, match=r"^checkpoint does not fit the model: first difference "
                                                  r"vision.encoder.encoder.layers.1.mlp.fc1.bias: model \(256,\), "
                                                  r"not in the checkpoint; 1 missing keys"):
        load_weights_into(_release_model(release_fixture), checkpoint)
