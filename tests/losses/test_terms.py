"""The objective's term table: a term is one registered function, weighted, logged and summed by name."""
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from real20m.config import parse_config
from real20m.losses import QCDLoss, TERMS, register_term

from .test_qcd_loss import outputs



@pytest.fixture
def spread_term():
    """A test-only term, registered the way a new term would be, removed afterwards."""
    @register_term("test_spread", gathers=("visual",))
    def spread(inputs):
        return inputs.gathered["visual"].var(dim=0).sum()
    yield spread
    del TERMS["test_spread"]


def test_a_registered_term_enters_the_total_with_its_weight(spread_term):
    without = QCDLoss({"caption": 0.0})
    with_term = QCDLoss({"caption": 0.0, "test_spread": 0.5})
    total_without, _ = without(outputs())
    total_with, terms = with_term(outputs())
    expected = outputs()["visual"].var(dim=0).sum().item()
    assert terms["test_spread"] == pytest.approx(expected)
    assert total_with.item() == pytest.approx(total_without.item() + 0.5 * expected, rel=1e-6)
    assert "visual" in with_term.keys_to_gather()


def test_a_registered_term_is_configured_logged_and_written_to_tensorboard(spread_term, tiny_data_root, tmp_path):
    from real20m.engine.trainer import train
    cfg = parse_config(["--config", "tiny", "--data_root", tiny_data_root, "--output_dir", str(tmp_path),
                        "--image_size", "32", "--batch_size", "4", "--workers", "0", "--vocab_size", "300",
                        "--max_steps", "2", "--print_freq", "1", "--loss.weights.test_spread", "0.5"])
    assert cfg.loss.weights["test_spread"] == 0.5
    train(cfg)
    assert "test_spread" in Path(tmp_path, "log.txt").read_text(encoding="utf-8")
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert "train/test_spread" in events.Tags()["scalars"]


def test_term_names_must_be_unique(spread_term):
    with pytest.raises(ValueError, match="already registered"):
        register_term("test_spread")(lambda inputs: inputs.scale)


def test_a_term_is_handed_only_the_outputs_it_reads():
    seen = {}

    @register_term("test_reader", reads=("fused",), gathers=("visual",))
    def reader(inputs):
        seen.update(local=set(inputs.local), gathered=set(inputs.gathered), outputs=set(inputs.outputs))
        return inputs.local["fused"].sum() * 0
    try:
        QCDLoss({"caption": 0.0, "test_reader": 1.0})({**outputs(), "extra": torch.zeros(3)})
    finally:
        del TERMS["test_reader"]
    assert TERMS["fused"].reads == ("query", "fused")
    assert seen == {"local": {"fused", "visual"}, "gathered": {"visual"}, "outputs": {"fused", "visual"}}


def test_an_output_a_term_reads_but_the_model_lacks_is_named_with_its_term():
    register_term("test_needs_extra", reads=("extra",), needs="a registered 'extra' output")(
        lambda inputs: inputs.scale)
    try:
        with pytest.raises(KeyError, match=r"'test_needs_extra' reads model output\(s\) \['extra'\] that the model "
                                           r"did not return: the test_needs_extra term needs a registered 'extra'"):
            QCDLoss({"caption": 0.0, "test_needs_extra": 1.0})(outputs())
        QCDLoss({"caption": 0.0})(outputs())   # registered with weight 0: not computed, so not needed
    finally:
        del TERMS["test_needs_extra"]
