"""real20m.model_source: what a path holds, read once, and the configuration layer of the input
settings a checkpoint was trained with (defaults < YAML < checkpoint < command line)."""
import logging

import pytest
import torch

from real20m.config import TrainedSetting, layers_from, log_configuration_notes, read_layers, resolve_layers
from real20m.model_source import (ExportedModel, ReleaseCheckpoint, TrainingCheckpoint, UntrainedModel,
                                  inspect_source)
from real20m.models.release_layout import WEIGHT_SECTIONS
from real20m.utils.checkpoint_io import CheckpointError


def saved(tmp_path, state, name="checkpoint.pth.tar"):
    path = tmp_path / name
    torch.save(state, path)
    return str(path)


def test_each_kind_of_path_is_told_apart(tmp_path):
    ours = saved(tmp_path, {"model": {}, "config": {"data": {"image_size": 32, "clip_length": 3, "query_language": "en"}}})
    release = saved(tmp_path, {section: {} for section in WEIGHT_SECTIONS}, "release.pth.tar")
    exported = tmp_path / "exported"
    exported.mkdir()
    (exported / "model.safetensors").write_bytes(b"")
    (exported / "config.json").write_text('{"clip_length": 4, "vision": {"image_size": 48}}')
    assert isinstance(inspect_source("init"), UntrainedModel) and isinstance(inspect_source(None), UntrainedModel)
    assert isinstance(inspect_source(ours), TrainingCheckpoint)
    assert isinstance(inspect_source(release), ReleaseCheckpoint)
    assert isinstance(inspect_source(str(exported)), ExportedModel)
    assert {(s.path, s.value) for s in inspect_source(ours).trained_settings()} == \
        {("data.image_size", 32), ("data.clip_length", 3), ("data.query_language", "en")}
    assert [(s.path, s.value) for s in inspect_source(release).trained_settings()] == [("data.compat", "original")]
    assert {(s.path, s.value) for s in inspect_source(str(exported)).trained_settings()} == \
        {("data.clip_length", 4), ("data.image_size", 48)}


def test_a_missing_path_names_itself(tmp_path):
    with pytest.raises(CheckpointError, match=r"nowhere\.pth\.tar: checkpoint file not found"):
        inspect_source(str(tmp_path / "nowhere.pth.tar"))
    folder = tmp_path / "half_exported"
    folder.mkdir()
    with pytest.raises(FileNotFoundError) as incomplete:
        inspect_source(str(folder))
    assert incomplete.value.filename == str(folder / "model.safetensors")


TRAINED = (TrainedSetting("data.image_size", 32, "using the checkpoint's image_size = 32"),
           TrainedSetting("data.clip_length", 3, "using the checkpoint's clip_length = 3"))


def test_the_checkpoint_layer_sits_between_the_yaml_file_and_the_command_line(caplog, tmp_path):
    # tiny.yaml says 64 px and 5 frames; the checkpoint 32 and 3; the command line 4 frames.
    layers = read_layers(["--config", "tiny", "--clip_length", "4"])
    cfg = resolve_layers(layers, TRAINED)
    assert (cfg.data.image_size, cfg.data.clip_length) == (32, 4)
    assert (cfg.model.image_size, cfg.model.clip_length) == (32, 4)   # derived from the layered data values
    with caplog.at_level(logging.INFO, logger="real20m"):
        log_configuration_notes(cfg)
    assert "using the checkpoint's image_size = 32 (not 64)" in caplog.text
    assert "command line: data.clip_length = 4, not the checkpoint's 3" in caplog.text
    # config.yaml records the layered values: read back with no checkpoint, it is the same configuration.
    written = tmp_path / "config.yaml"
    written.write_text(cfg.to_yaml(), encoding="utf-8")
    assert resolve_layers(read_layers(["--config", str(written)])).to_dict() == cfg.to_dict()


def test_typed_options_are_the_top_layer_too():
    cfg = resolve_layers(layers_from("tiny", {"data.image_size": 48}), TRAINED)
    assert (cfg.data.image_size, cfg.data.clip_length) == (48, 3)
    assert resolve_layers(layers_from("tiny"), ()).data.image_size == 64
