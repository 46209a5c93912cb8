"""What a run records of its configuration: the notes in its log, ``config.yaml`` in its folder."""
from __future__ import annotations

import logging
import os

from real20m.config.schema import Config
from real20m.utils.atomic import atomic_open

# The package's logger: its records keep the name they had when the configuration was one module.
logger = logging.getLogger(__package__)


def log_configuration_notes(config: Config) -> None:
    for note in config.notes:
        logger.info("configuration: %s", note)


def write_config(config: Config, output_dir: str) -> str:
    """``OUTPUT_DIR/config.yaml`` (written atomically: a crash never leaves half a file)."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "config.yaml")
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(config.to_yaml())
    return path
