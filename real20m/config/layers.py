"""The layers of one configuration, merged in order: defaults < YAML file < a checkpoint's trained
input settings < command line (or typed options), then resolved once."""
from __future__ import annotations

import copy
import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple

from real20m.config.file_layout import checkpoint_folder
from real20m.config.original_flags import apply_original_flags
from real20m.config.probes import find_latest, read_file_facts, select_folder_backbone
from real20m.config.resolution import resolve
from real20m.config.schema import LATEST, Config, plain
from real20m.config.values import defaults, get_path, set_value
from real20m.config.yaml_files import apply_yaml, config_path


class TrainedSetting(NamedTuple):
    """One setting of a checkpoint's layer: its dotted path, its value, and the line that says so."""
    path: str
    value: Any
    message: str


@dataclass(frozen=True)
class ConfigLayers:
    """One configuration's inputs before they are resolved: the defaults with the YAML file on
    top (``base``) and the command line's changes in order (``changes``: path, value, where from),
    kept apart so that a checkpoint's trained settings can go between them."""
    base: Mapping[str, Any]
    changes: tuple = ()
    # The original's flags whose meaning depends on the merged values (--finetune, unused ones).
    flags: Mapping[str, Any] = field(default_factory=dict)
    explicit_backbone: bool = False
    print_config: bool = False

    def merged(self) -> dict:
        values = copy.deepcopy(plain(self.base))
        for path, value, source in self.changes:
            set_value(values, path, value, source)
        return values

    def value(self, path: str) -> Any:
        """The value at dotted ``path`` once the command line is applied (before resolving)."""
        return get_path(self.merged(), path)

    def resume_path(self) -> str | None:
        """``run.resume``, with ``latest`` found in the checkpoint folder as ``resolve`` finds it."""
        run = self.merged()["run"]
        if run["resume"] != LATEST:
            return run["resume"]
        latest = find_latest(checkpoint_folder(run))
        return str(latest) if latest else None


def base_values(config: str | None) -> dict:
    """The defaults with the YAML file ``config`` (a path or a packaged config's name) on top."""
    values = defaults()
    values["seed"] = 0
    if config:
        apply_yaml(values, config_path(config))
    return values


def layers_from(config: str | None = None, options: Mapping[str, Any] | None = None) -> ConfigLayers:
    """The layers of typed values: a YAML file (or packaged config name) and {dotted path: value}."""
    changes = tuple((path, value, "options") for path, value in (options or {}).items())
    return ConfigLayers(base_values(config), changes)


def resolve_layers(layers: ConfigLayers, trained: tuple[TrainedSetting, ...] = ()) -> Config:
    """Merge defaults < YAML < ``trained`` (a checkpoint's input settings) < command line and
    resolve. Each trained setting that changes a value, and each flag that overrides one, becomes
    a note (logged once the run's logging is set up)."""
    values = copy.deepcopy(plain(layers.base))
    notes = _apply_trained(values, trained)
    overridden = {setting.path: setting.value for setting in trained}
    for path, value, source in layers.changes:
        if path in overridden and overridden[path] != value:
            notes.append(f"{source}: {path} = {value}, not the checkpoint's {overridden[path]}")
        set_value(values, path, value, source)
    notes += apply_original_flags(values, layers.flags)
    notes += select_folder_backbone(values, layers.explicit_backbone)
    config = dataclasses.replace(resolve(values, read_file_facts(values)), notes=tuple(notes))
    if layers.print_config:
        sys.stdout.write(config.to_yaml())
        raise SystemExit(0)
    return config


def _apply_trained(values: dict, trained: tuple[TrainedSetting, ...]) -> list[str]:
    """Put the checkpoint's settings into ``values``; a note for each one that changes a value."""
    notes = []
    for setting in trained:
        current = get_path(values, setting.path)
        if current != setting.value:
            notes.append(setting.message + (f" (not {current})" if current is not None else ""))
        set_value(values, setting.path, setting.value, "the checkpoint")
    return notes
