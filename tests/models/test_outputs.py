"""Registered training outputs: added after the model's own, never in place of one."""
import pytest
import torch

from real20m.models.outputs import EXTRA_OUTPUTS, add_registered_outputs, register_output


@pytest.fixture
def doubled_fused():
    @register_output("test_doubled_fused")
    def doubled(model, batch, outputs):
        return 2 * outputs["fused"]
    yield
    del EXTRA_OUTPUTS["test_doubled_fused"]


def test_a_registered_output_is_computed_from_the_models_own(doubled_fused):
    out = add_registered_outputs(None, {}, {"fused": torch.tensor([[1.0, -0.5]])})
    assert out["test_doubled_fused"].tolist() == [[2.0, -1.0]]


def test_a_registered_output_never_replaces_one_the_model_returns(doubled_fused):
    with pytest.raises(ValueError, match="'test_doubled_fused' is registered, but the model returns it already"):
        add_registered_outputs(None, {}, {"fused": torch.ones(1, 2), "test_doubled_fused": torch.ones(1, 2)})
    with pytest.raises(ValueError, match="already registered"):
        register_output("test_doubled_fused")(lambda model, batch, outputs: outputs["fused"])
