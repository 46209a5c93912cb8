"""The inputs before they are resolved: a nested dict of plain values, read and written by dotted
path (``data.clip_length``, ``optim.lr_mult.text``)."""
from __future__ import annotations

from typing import Any, Mapping

from real20m.config.schema import DERIVED, MAPPING_FIELDS, SECTIONS, Config, ConfigError, plain

# Why a derived field cannot be set: the input it follows.
DERIVED_FROM = {
    "model.clip_length": "frames per clip is data.clip_length (--clip_length)",
    "model.image_size": "the image size is data.image_size (--image_size)",
    "model.use_title_mask": "title masking follows data.compat",
    "model.use_query_mask": "query masking follows data.compat",
    "data.item_pairs": "item-pair batches follow loss.query_guidance",
    "data.step_batch_size": "an optimizer step's samples are data.batch_size x optim.accum_freq",
    "data.category_labels": "category labels follow the weights of the loss terms that read them",
    "data.category_names": "the category vocabulary is read from the cluster file (data.cluster_file)",
    "model.category_classes": "the category head follows loss.weights.category and the cluster file's categories",
    "model.momentum_encoder": "the momentum encoder follows the loss terms that read its outputs",
}


def defaults() -> dict:
    """Nested dict of the section defaults (plain values), derived fields left out."""
    values = Config().to_dict()
    for section, names in DERIVED.items():
        for name in names:
            values[section].pop(name)
    return values


def default_of(path: str) -> Any:
    return get_path(defaults(), path)


def get_path(values: Mapping, path: str) -> Any:
    value: Any = values
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def set_value(values: dict, path: str, value: Any, source: str) -> None:
    """Put ``value`` at ``path``, the top-level ``seed`` included."""
    if path == "seed":
        values["seed"] = value
    else:
        set_path(values, path, value, source)


def set_path(values: dict, path: str, value: Any, source: str) -> None:
    """Put ``value`` at dotted ``path``; a mapping value merges into a mapping option."""
    section, name = _option_of(values, path, source)
    parts = path.split(".")
    if len(parts) == 2:
        if f"{section}.{name}" in MAPPING_FIELDS and isinstance(value, Mapping) \
                and isinstance(values[section][name], dict):
            values[section][name] = {**values[section][name], **plain(value)}
        else:
            values[section][name] = plain(value)
        return
    if f"{section}.{name}" not in MAPPING_FIELDS:
        raise ConfigError(f"{source}: {section}.{name} is not a mapping, so {path!r} cannot be set")
    target = values[section]
    for part in parts[1:-1]:
        if target.get(part) is None:
            target[part] = {}
        if not isinstance(target[part], dict):
            raise ConfigError(f"{source}: {path!r}: {part} is not a mapping")
        target = target[part]
    target[parts[-1]] = plain(value)


def _option_of(values: dict, path: str, source: str) -> tuple[str, str]:
    """(section, field) that ``path`` sets; refuses unknown and derived ones."""
    parts = path.split(".")
    section = parts[0]
    if section not in SECTIONS:
        raise ConfigError(f"{source}: unknown section {section!r} in {path!r} (sections: {', '.join(SECTIONS)})")
    if len(parts) < 2:
        raise ConfigError(f"{source}: {path!r} names a section, not an option")
    name = parts[1]
    if name in DERIVED.get(section, ()):
        raise ConfigError(f"{source}: {path} is derived, not set: " + DERIVED_FROM[f"{section}.{name}"])
    if name not in values[section]:
        raise ConfigError(f"{source}: unknown option {section}.{name}")
    return section, name
