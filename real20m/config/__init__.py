"""Configuration: defaults < YAML file < [checkpoint] < command line, resolved once into frozen sections.

Every option has one home, a dotted path ``section.field`` (``data.clip_length``,
``optim.lr_mult.text``). It can be set

* in a YAML file (``--config FILE.yaml`` or a packaged name, ``--config tiny``) under its section
  (``data: {clip_length: 8}``); a flat top-level key with an option's flag name
  (``clip_length: 8``) is accepted too, as older files wrote them;
* on the command line by its flag (``--clip_length 8``, the original release's names and short
  forms included) or by its dotted path (``--data.clip_length 8``, ``--model.text.hidden_size 32``:
  any value inside the architecture mappings, parsed as YAML).

Evaluating a checkpoint adds one layer: the input settings it was trained with (image size,
frames per clip, text lengths, query language; compat for a release checkpoint) go between the
YAML file and the command line, so defaults < YAML < checkpoint < command line, each change
logged. ``read_layers`` (or ``layers_from`` for typed values) collects the layers;
``resolve_layers`` merges them and ends in ``resolve``, the one place that derives dependent values (frames per
clip and image size of the model from the data, title/query masking from ``compat``, no caption
decoder when its weight is 0, the checkpoint folder, the data paths under ``--data_root``). The
result is a frozen ``Config``; each builder receives only its section. ``Config.to_yaml()`` writes
the inputs (which ``--config`` reads back to the same ``Config``) and, for information, every
filled-in or derived value under ``derived:``.

One concern a module: ``schema`` (the sections), ``options`` (flags and help texts), ``values``
(dotted paths into the merged inputs), ``yaml_files``, ``command_line``, ``original_flags`` (the
release's flags that no option holds), ``probes`` (everything read from the file system, read
before resolving), ``file_layout`` (the paths a run uses), ``resolution`` (``resolve``, which
reads no file), ``layers`` (the merge), ``output`` (the log's notes, config.yaml).
"""
from __future__ import annotations

from real20m.config.command_line import build_parser, command_line_options, parse_config, read_layers
from real20m.config.layers import ConfigLayers, TrainedSetting, layers_from, resolve_layers
from real20m.config.options import OPTIONS, Option
from real20m.config.output import log_configuration_notes, write_config
from real20m.config.probes import VALIDATION_FILES
from real20m.config.resolution import default_loss_weights, default_lr_mult, resolve
from real20m.config.schema import (COMPAT_MODES, DERIVED, LATEST, MAPPING_FIELDS, SECTIONS, Config, ConfigError,
                                   DataConfig, LossConfig, ModelConfig, OptimConfig, RunConfig, plain)
from real20m.config.value_types import str2bool, yaml_value

__all__ = [
    "COMPAT_MODES", "DERIVED", "LATEST", "MAPPING_FIELDS", "OPTIONS", "SECTIONS", "VALIDATION_FILES", "Config",
    "ConfigError", "ConfigLayers", "DataConfig", "LossConfig", "ModelConfig", "OptimConfig", "Option", "RunConfig",
    "TrainedSetting", "build_parser", "command_line_options", "default_loss_weights", "default_lr_mult",
    "layers_from", "log_configuration_notes", "parse_config", "plain", "read_layers", "resolve", "resolve_layers",
    "str2bool", "write_config", "yaml_value",
]
