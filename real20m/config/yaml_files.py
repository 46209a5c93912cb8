"""Reading a YAML config file (``--config FILE.yaml``, or the name of a packaged one) into the
merged inputs."""
from __future__ import annotations

import os
from importlib import resources

import yaml

from real20m.config.options import FLAT_NAMES
from real20m.config.schema import SECTIONS, ConfigError
from real20m.config.value_types import ConfigLoader
from real20m.config.values import set_path


def apply_yaml(values: dict, path: str) -> None:
    """Sections (``data: {...}``) or flat option names (``clip_length: 8``); ``derived`` is ignored."""
    content = _yaml_values(path)
    for key, value in content.items():
        if key == "derived":
            continue  # written by to_yaml() for information; resolve() computes it again
        if key == "seed":
            values["seed"] = value
        elif key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: section {key} must be a mapping")
            for name, item in value.items():
                set_path(values, f"{key}.{name}", item, path)
        elif key in FLAT_NAMES:
            set_path(values, FLAT_NAMES[key], value, path)
        else:
            raise ConfigError(f"{path}: unknown option(s) {key}")


def _yaml_values(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        try:
            content = yaml.load(handle, Loader=ConfigLoader) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            raise ConfigError(f"{path}: {where}not valid YAML ({getattr(error, 'problem', None) or error})") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of sections or option names to values")
    return content


def config_path(name: str) -> str:
    """A YAML path, or the name of a config shipped in the package (``tiny`` -> real20m/configs/tiny.yaml)."""
    if os.path.isfile(name):
        return name
    packaged = resources.files("real20m") / "configs" / f"{name}.yaml"
    if packaged.is_file() and not name.endswith((".yaml", ".yml")):
        return str(packaged)
    folder = resources.files("real20m") / "configs"
    shipped = ", ".join(sorted(entry.name[:-len(".yaml")] for entry in folder.iterdir()
                               if entry.name.endswith(".yaml")))
    raise ConfigError(f"{name}: no such config file (give a YAML file, or a packaged config: {shipped})")
