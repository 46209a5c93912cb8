"""Where a pretrained backbone is read from, said before anything is loaded."""
import pytest

from real20m.models.towers import PretrainedNotAvailableError, describe_pretrained_source


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
