"""The momentum encoder: an EMA copy of the query and item path that takes no gradient, stays out
of the optimizer, and whose embeddings the model returns while training."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from real20m.config import OptimConfig
from real20m.engine.optim import build_optimizer
from real20m.models import build_model
from real20m.models.convert import CONVERTED_CONFIG, CONVERTED_WEIGHTS, load_weights_into, save_converted
from real20m.models.lr_groups import grouped_parameters
from real20m.models.momentum import MOMENTUM_OUTPUTS

from .conftest import VOCAB, deterministic_tiny_config, make_batch

M = 0.9
WATCHED = "pooling.projection.weight"


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model(deterministic_tiny_config(momentum=M), vocab_size=VOCAB)


def copied(model, name):
    return model.momentum_encoder.model.state_dict()[name]


def test_the_copy_starts_equal_and_follows_two_steps_of_the_hand_calculated_average(model):
    start = model.state_dict()[WATCHED].double().numpy().copy()
    np.testing.assert_array_equal(copied(model, WATCHED).double().numpy(), start)
    expected = start
    for step in (1, 2):
        with torch.no_grad():   # stands for an optimizer step
            model.state_dict()[WATCHED].add_(0.5 * step)
        model.update_momentum()
        expected = M * expected + (1 - M) * model.state_dict()[WATCHED].double().numpy()
        np.testing.assert_allclose(copied(model, WATCHED).double().numpy(), expected, rtol=1e-6, atol=1e-7)
    # theta_m = m^2 theta_0 + m (1 - m) (theta_0 + 0.5) + (1 - m) (theta_0 + 1.5), the closed form.
    np.testing.assert_allclose(expected, start + M * (1 - M) * 0.5 + (1 - M) * 1.5, rtol=1e-6, atol=1e-7)


def test_the_copy_has_no_caption_decoder_takes_no_gradient_and_is_in_no_optimizer_group(model):
    assert model.caption is not None and model.momentum_encoder.model.caption is None
    kept = {name for name, _ in model.momentum_encoder.model.named_children()}
    assert kept == {"text", "vision", "frame", "pooling"}
    copy_params = list(model.momentum_encoder.parameters())
    assert copy_params and not any(param.requires_grad for param in copy_params)
    model.train()
    out = model(make_batch())
    (out["fused"].sum() + out["query"].sum() + out["caption_logits"].sum()).backward()
    assert all(param.grad is None for param in copy_params)
    assert all(model.state_dict(keep_vars=True)[name].grad is not None for name in (WATCHED, "frame.positional_embedding"))

    optimizer = build_optimizer(model, OptimConfig())
    in_optimizer = {id(param) for group in optimizer.param_groups for param in group["params"]}
    grouped = {id(param) for params in grouped_parameters(model.named_parameters(), model.LR_GROUPS).values()
               for param in params}
    assert not in_optimizer & {id(param) for param in copy_params}
    assert not grouped & {id(param) for param in copy_params}


def test_training_outputs_are_the_copys_unit_embeddings_without_gradient(model):
    batch = make_batch()
    model.train()
    out = model(batch)
    # An unchanged copy embeds as the model does (no dropout in the deterministic config).
    torch.testing.assert_close(out["momentum_query"], out["query"].detach())
    torch.testing.assert_close(out["momentum_fused"], out["fused"].detach())
    with torch.no_grad():
        model.state_dict()[WATCHED].mul_(-1.0)
    model.update_momentum()
    out = model(batch)
    copy = model.momentum_encoder.model
    expected = copy.encode_items(batch["title_ids"], batch["title_mask"], batch["pixels"]).fused
    torch.testing.assert_close(out["momentum_fused"], expected)
    assert not torch.allclose(out["momentum_fused"], out["fused"])
    for name in MOMENTUM_OUTPUTS:
        assert not out[name].requires_grad
        torch.testing.assert_close(out[name].norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(out["momentum_query"], F.normalize(
        copy.query_features(batch["query_ids"], batch["query_mask"]), dim=-1))
    assert model.momentum_encoder.model.training is False   # always eval mode
    model.eval()
    assert not set(MOMENTUM_OUTPUTS) & set(model(batch))


def test_a_model_without_momentum_has_no_copy_and_its_update_does_nothing():
    torch.manual_seed(0)
    plain = build_model(deterministic_tiny_config(), vocab_size=VOCAB)
    before = {name: value.clone() for name, value in plain.state_dict().items()}
    plain.update_momentum()
    assert plain.momentum_encoder is None
    assert not any("momentum" in name for name in before)
    assert all(torch.equal(value, plain.state_dict()[name]) for name, value in before.items())


def test_an_export_leaves_the_copy_out_and_loads_into_a_model_without_one(model, tmp_path):
    save_converted(model, tmp_path)
    config = json.loads((tmp_path / CONVERTED_CONFIG).read_text(encoding="utf-8"))
    exported = build_model(config, vocab_size=VOCAB)
    assert "momentum" not in config and exported.momentum_encoder is None
    load_weights_into(exported, {"model": load_file(tmp_path / CONVERTED_WEIGHTS)})   # strict
    for name, value in exported.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
