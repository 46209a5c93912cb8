"""Checkpoint files: crash-safe writing and safe reading.

A checkpoint is written under a temporary name in its folder, flushed to disk, then renamed over
the destination (``real20m.utils.atomic``): a crash at any moment leaves either the previous file
or the new one, never a half-written one. Loading uses torch.load(weights_only=True), so a file
can only hold tensors and plain containers; anything else is refused without running its code.

The training job (``engine.checkpoint``) and the library (model conversion, loading for inference)
both read checkpoints, so this lives below both.
"""
import re
from pathlib import Path

import torch

from real20m.errors import InputError
from real20m.utils.atomic import atomic_open


class CheckpointError(InputError, RuntimeError):
    """A checkpoint that cannot be written or read; the message names the file and the reason."""


def save_checkpoint(state: dict, path) -> None:
    """Atomically and durably write `state` to `path` (the folder is created if needed)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # e.g. a file where the folder should be: say which folder, not just errno
        raise CheckpointError(f"{path.parent}: cannot create the checkpoint folder ({error.strerror})") from error
    try:
        with atomic_open(path, "xb", durable=True) as file:
            torch.save(state, file)
    except OSError as error:   # a full disk or a read-only folder: the files already there stay as they were
        raise CheckpointError(f"{path}: cannot write the checkpoint ({error.strerror or error}); "
                              "the previous checkpoints are unchanged") from error


def _weights_only_reason(error: Exception) -> str:
    """The unpickler's own reason, e.g. "Unsupported global: GLOBAL io.open ...", without torch's advice."""
    match = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
    return match.group(1).strip() if match else "unsupported content"


def load_checkpoint(path) -> dict:
    """Load a checkpoint dict onto the CPU; CheckpointError names the file and the reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError/EOFError/KeyError/UnpicklingError for bad files
        if "Weights only load failed" in str(error):
            raise CheckpointError(
                f"{path}: refused as unsafe: torch.load(weights_only=True) rejected it "
                f"({_weights_only_reason(error)}); the file holds objects other than tensors and plain "
                f"containers, whose loading could run code from the file, or it is not a checkpoint at all"
            ) from None
        raise CheckpointError(
            f"{path}: truncated or corrupt checkpoint ({type(error).__name__}: {str(error)[:200]})"
        ) from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(state).__name__}")
    return state

