"""The grid of ``real20m-compare``: which variants to train, on which synthetic datasets, with which
training seeds, read from one YAML file and overridden from the command line.

    config: tiny                      # every variant's config unless it names its own
    max_steps: 0                      # optimizer steps per run (0: the config's epochs)
    datasets: [products:0, household:1]   # synthetic FAMILY:GENERATOR_SEED
    dataset_sizes: {num_queries: 16}  # optional sizes for the generator (its defaults otherwise)
    seeds: [0, 1, 2]                  # training seeds
    tasks: [video2goods, goods2video] # optional; default: every task
    options: {data.workers: 0}        # optional; given to every variant, before its own options
    variants:
      - name: qcd
      - name: title_only
        options: {model.fusion: title_only}
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any

import yaml

from real20m.errors import InputError

DEFAULT_CONFIG = "tiny"
VARIANT_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")   # a variant's name is also a folder name
GRID_KEYS = {"config", "max_steps", "datasets", "dataset_sizes", "seeds", "tasks", "options", "variants"}
VARIANT_KEYS = {"name", "config", "options", "description"}


class GridError(InputError, ValueError):
    """A grid file (or an override of it) that cannot be run; the message names the file and the key."""


@dataclass(frozen=True)
class DatasetSpec:
    """One synthetic dataset: its family (``products``, ``household``) and generator seed."""
    family: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.family}_seed{self.seed}"

    def __str__(self) -> str:
        return f"{self.family}:{self.seed}"


@dataclass(frozen=True)
class Variant:
    """A method to compare: a config and the options (dotted path or flag name -> value) on top."""
    name: str
    config: str
    options: tuple[tuple[str, Any], ...] = ()
    description: str = ""


@dataclass(frozen=True)
class Grid:
    variants: tuple[Variant, ...]
    datasets: tuple[DatasetSpec, ...]
    seeds: tuple[int, ...]
    tasks: tuple[str, ...]
    max_steps: int = 0
    options: tuple[tuple[str, Any], ...] = ()
    dataset_sizes: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class GridOverrides:
    """What the command line replaces in the grid; None keeps the grid's value."""
    datasets: tuple[DatasetSpec, ...] | None = None
    seeds: tuple[int, ...] | None = None
    max_steps: int | None = None


def parse_dataset(text: str) -> DatasetSpec:
    """``FAMILY:SEED`` -> DatasetSpec, the family checked against the synthetic generator's."""
    from real20m.datasets.synthetic import STYLES
    family, _, seed = str(text).partition(":")
    if family not in STYLES or not seed.isdigit():
        raise GridError(f"dataset {text!r}: expected FAMILY:SEED with FAMILY one of {sorted(STYLES)} and SEED a "
                        "non-negative integer, e.g. products:0")
    return DatasetSpec(family, int(seed))


def load_grid(path: str, tasks: tuple[str, ...]) -> Grid:
    """The grid in YAML file ``path``; ``tasks`` are the known task names (the default: all)."""
    try:
        with open(path, encoding="utf-8") as file:
            raw = yaml.safe_load(file)
    except yaml.YAMLError as error:
        raise GridError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise GridError(f"{path}: expected a mapping with 'variants', 'datasets' and 'seeds'")
    _refuse_unknown(path, raw, GRID_KEYS, "grid")
    folder = os.path.dirname(os.path.abspath(path))
    default_config = str(raw.get("config", DEFAULT_CONFIG))
    variants = tuple(_variant(path, entry, default_config, folder) for entry in _list(path, raw, "variants"))
    _check_unique(path, [variant.name for variant in variants])
    return Grid(variants=variants,
                datasets=tuple(_dataset(path, text) for text in _list(path, raw, "datasets")),
                seeds=tuple(_integer(path, "seeds", seed) for seed in _list(path, raw, "seeds")),
                tasks=_tasks(path, raw.get("tasks"), tasks),
                max_steps=_integer(path, "max_steps", raw.get("max_steps", 0)),
                options=_options(path, "options", raw.get("options")),
                dataset_sizes=_dataset_sizes(path, raw.get("dataset_sizes")))


def apply_overrides(grid: Grid, overrides: GridOverrides) -> Grid:
    changes = {field.name: getattr(overrides, field.name) for field in dataclasses.fields(overrides)}
    return dataclasses.replace(grid, **{name: value for name, value in changes.items() if value is not None})


def _dataset(path: str, text) -> DatasetSpec:
    try:
        return parse_dataset(text)
    except GridError as error:
        raise GridError(f"{path}: {error}") from None


def _dataset_sizes(path: str, value) -> tuple[tuple[str, int], ...]:
    from real20m.datasets.synthetic import SIZE_NAMES
    sizes = _mapping(path, "dataset_sizes", value)
    _refuse_unknown(path, dict(sizes), set(SIZE_NAMES), "dataset_sizes")
    return tuple((name, _integer(path, f"dataset_sizes.{name}", size)) for name, size in sizes)


def _variant(path: str, entry, default_config: str, folder: str) -> Variant:
    if not isinstance(entry, dict) or "name" not in entry:
        raise GridError(f"{path}: every entry of 'variants' needs a name, got {entry!r}")
    name = str(entry["name"])
    if not VARIANT_NAME.match(name):
        raise GridError(f"{path}: variant name {name!r}: use letters, digits and _ . + - only (it names a folder)")
    _refuse_unknown(path, entry, VARIANT_KEYS, f"variant {name!r}")
    return Variant(name=name, config=_config_path(str(entry.get("config", default_config)), folder),
                   options=_options(path, f"variant {name!r} options", entry.get("options")),
                   description=str(entry.get("description", "")))


def _config_path(config: str, folder: str) -> str:
    """A config file named relative to the grid file, as an absolute path; a packaged name as it is."""
    beside_grid = os.path.join(folder, config)
    return beside_grid if not os.path.isabs(config) and os.path.isfile(beside_grid) else config


def _options(path: str, where: str, value) -> tuple[tuple[str, Any], ...]:
    return tuple((str(key), option) for key, option in _mapping(path, where, value))


def _mapping(path: str, where: str, value) -> list[tuple[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise GridError(f"{path}: {where}: expected a mapping, got {value!r}")
    return list(value.items())


def _list(path: str, raw: dict, key: str) -> list:
    value = raw.get(key)
    if not isinstance(value, list) or not value:
        raise GridError(f"{path}: '{key}' must be a non-empty list")
    return value


def _integer(path: str, where: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise GridError(f"{path}: {where}: expected a non-negative integer, got {value!r}")
    return value


def _tasks(path: str, value, known: tuple[str, ...]) -> tuple[str, ...]:
    if value is None:
        return known
    unknown = [task for task in value if task not in known] if isinstance(value, list) else [value]
    if unknown or not value:
        raise GridError(f"{path}: tasks: expected a non-empty list of {list(known)}, got {value!r}")
    return tuple(value)


def _refuse_unknown(path: str, raw: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise GridError(f"{path}: {where}: unknown key(s) {unknown}; known: {sorted(known)}")


def _check_unique(path: str, names: list[str]) -> None:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise GridError(f"{path}: variant name(s) {repeated} used more than once")
