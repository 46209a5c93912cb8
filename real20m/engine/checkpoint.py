"""Crash-safe checkpoint files.

A checkpoint is first written to a temporary file in the destination folder, flushed to disk,
then renamed over the destination (os.replace is atomic on POSIX): a crash at any moment leaves
either the previous file or the new one, never a half-written one. Loading uses
torch.load(weights_only=True), so a file can only hold tensors and plain containers; anything
else is refused without running its code.
"""
import os
import re
import shutil
import uuid
from pathlib import Path

import torch

LAST_NAME = "last.pth.tar"
BEST_NAME = "best.pth.tar"   # the best validation so far (--val_freq); never the one --resume latest picks
NUMBERED_PATTERN = re.compile(r"^checkpoint_(\d+)_(\d+)\.pth\.tar$")


class CheckpointError(RuntimeError):
    pass


def _temp_path_next_to(path: Path) -> Path:
    # Hidden, unique per writer; never matches the checkpoint names, so readers ignore leftovers.
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX keeps it in the directory entry)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(temp: Path, path: Path) -> None:
    os.replace(temp, path)
    _fsync_directory(path.parent)


def _copy_durably(source: Path, target: Path) -> None:
    with open(source, "rb") as reader, open(target, "wb") as writer:
        shutil.copyfileobj(reader, writer)
        writer.flush()
        os.fsync(writer.fileno())


def save_checkpoint(state: dict, path) -> None:
    """Atomically write `state` to `path` (the folder is created if needed)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # e.g. a file where the folder should be: say which folder, not just errno
        raise CheckpointError(f"{path.parent}: cannot create the checkpoint folder ({error.strerror})") from error
    temp = _temp_path_next_to(path)
    try:
        # os.open with 0o666 lets the umask decide permissions, as a plain open() would.
        with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        _publish(temp, path)
    except OSError as error:   # a full disk or a read-only folder: the files already there stay as they were
        raise CheckpointError(f"{path}: cannot write the checkpoint ({error.strerror or error}); "
                              "the previous checkpoints are unchanged") from error
    finally:
        temp.unlink(missing_ok=True)


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


def checkpoint_keys(path) -> set[str]:
    """Top-level keys of a checkpoint file, read without loading its tensors (memory-mapped)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # legacy (pre-zip) format, or a bad file: the full load says what is wrong
        state = load_checkpoint(path)
    return set(state) if isinstance(state, dict) else set()


def _numbered_key(path: Path) -> tuple[int, int]:
    epoch, step = NUMBERED_PATTERN.match(path.name).groups()
    return int(epoch), int(step)


class CheckpointManager:
    """checkpoint_<epoch>_<step>.pth.tar files plus last.pth.tar, always the newest one.

    keep_last_n > 0 deletes all but the newest n numbered files; 0 keeps every file.
    Call save() on the main rank only.
    """

    def __init__(self, checkpoint_dir, keep_last_n: int = 0):
        if keep_last_n < 0:
            raise ValueError(f"keep_last_n must be >= 0, got {keep_last_n}")
        self.checkpoint_dir = Path(checkpoint_dir)
        self.keep_last_n = keep_last_n

    @property
    def last_path(self) -> Path:
        return self.checkpoint_dir / LAST_NAME

    def numbered_checkpoints(self) -> list[Path]:
        """Numbered checkpoint files, oldest first."""
        if not self.checkpoint_dir.is_dir():
            return []
        paths = [path for path in self.checkpoint_dir.iterdir() if NUMBERED_PATTERN.match(path.name)]
        return sorted(paths, key=_numbered_key)

    def save(self, state: dict, epoch: int, step: int) -> Path:
        path = self.checkpoint_dir / f"checkpoint_{epoch}_{step}.pth.tar"
        save_checkpoint(state, path)
        self._point_last_to(path)
        self._prune()
        return path

    def save_named(self, name: str, state: dict) -> Path:
        """A checkpoint outside the numbered series (not pruned, not last.pth.tar)."""
        path = self.checkpoint_dir / name
        save_checkpoint(state, path)
        return path

    def _point_last_to(self, path: Path) -> None:
        # A hard link to a temp name, renamed over last.pth.tar: atomic, and no second serialisation.
        temp = _temp_path_next_to(self.last_path)
        try:
            try:
                os.link(path, temp)
            except OSError:  # file systems without hard links: copy instead
                _copy_durably(path, temp)
            _publish(temp, self.last_path)
        except OSError as error:
            raise CheckpointError(f"{self.last_path}: cannot point it to {path.name} ({error.strerror or error}); "
                                  "it still holds the previous checkpoint") from error
        finally:
            temp.unlink(missing_ok=True)

    def _prune(self) -> None:
        if self.keep_last_n == 0:
            return
        for path in self.numbered_checkpoints()[: -self.keep_last_n]:
            path.unlink()  # last.pth.tar is its own link, unaffected

    def latest(self) -> Path | None:
        """last.pth.tar, else the newest numbered checkpoint, else None."""
        if self.last_path.is_file():
            return self.last_path
        numbered = self.numbered_checkpoints()
        return numbered[-1] if numbered else None
