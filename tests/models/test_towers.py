"""Where a pretrained backbone is read from, said before anything is loaded; text pooling."""
import pytest
import torch

from real20m.config import parse_config
from real20m.models import build_model
from real20m.models.towers import PretrainedNotAvailableError, describe_pretrained_source, masked_mean

from .conftest import VOCAB, deterministic_tiny_config


def test_a_local_folder_is_named_as_such(tmp_path):
    assert describe_pretrained_source(str(tmp_path)) == f"local folder {tmp_path}"


def test_an_uncached_hub_name_offline_fails_with_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(PretrainedNotAvailableError, match="not in the local Hugging Face cache, and HF_HUB_OFFLINE=1"):
        describe_pretrained_source("someone/not-cached-model")


def test_an_uncached_hub_name_online_says_it_will_download(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert describe_pretrained_source("someone/not-cached-model").startswith("the network")


def test_a_cached_hub_name_is_read_from_the_cache(monkeypatch, tmp_path):
    import huggingface_hub.constants

    snapshot = tmp_path / "models--someone--cached-model" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--someone--cached-model" / "refs").mkdir()
    (tmp_path / "models--someone--cached-model" / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert describe_pretrained_source("someone/cached-model") == f"the local Hugging Face cache ({snapshot})"


def test_mean_text_pooling_averages_only_the_unmasked_token_states():
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(masked_mean(states, mask), torch.tensor([[2.0, 3.0]]))
    assert torch.allclose(masked_mean(states, None), torch.tensor([[104 / 3, 106 / 3]]))


def test_text_pooling_is_configurable_and_padding_does_not_move_a_mean_pooled_text():
    model = build_model(deterministic_tiny_config(text_pooling="mean"), vocab_size=VOCAB).eval()
    assert model.text.pooling == "mean"
    # Not set: the backbone's own, the [CLS] state of a Chinese-CLIP text tower.
    assert build_model(deterministic_tiny_config(text_pooling=None), vocab_size=VOCAB).text.pooling == "cls"
    ids = torch.tensor([[5, 6, 7]])
    padded = torch.tensor([[5, 6, 7, 0, 0]])
    with torch.no_grad():
        short = model.text_features(ids, torch.ones_like(ids))
        long = model.text_features(padded, torch.tensor([[1, 1, 1, 0, 0]]))
    assert torch.allclose(short, long, atol=1e-5)


def test_an_unknown_text_pooling_is_refused():
    cfg = parse_config(["--config", "tiny", "--model.text_pooling", "max"]).model.architecture()
    with pytest.raises(ValueError, match="unknown text pooling 'max'"):
        build_model(cfg, vocab_size=VOCAB)


def test_eos_pooling_needs_a_clip_text_tower():
    with pytest.raises(ValueError, match="text_pooling eos"):
        build_model(deterministic_tiny_config(text_pooling="eos"), vocab_size=VOCAB)
