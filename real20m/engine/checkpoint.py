"""The training run's checkpoint series: numbered files plus last.pth.tar, pruned to the newest n.

Each file is written crash-safely and read with weights_only=True by ``real20m.utils.checkpoint_io``.
"""
import os
import re
import shutil
from pathlib import Path

from real20m.utils.atomic import atomic_path
from real20m.utils.checkpoint_io import CheckpointError, save_checkpoint

LAST_NAME = "last.pth.tar"
BEST_NAME = "best.pth.tar"   # the best validation so far (--val_freq); never the one --resume latest picks
NUMBERED_PATTERN = re.compile(r"^checkpoint_(\d+)_(\d+)\.pth\.tar$")


def _copy_durably(source: Path, target) -> None:
    with open(source, "rb") as reader, open(target, "wb") as writer:
        shutil.copyfileobj(reader, writer)
        writer.flush()
        os.fsync(writer.fileno())


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
        try:
            with atomic_path(self.last_path, durable=True) as temp:
                try:
                    os.link(path, temp)
                except OSError:  # file systems without hard links: copy instead
                    _copy_durably(path, temp)
        except OSError as error:
            raise CheckpointError(f"{self.last_path}: cannot point it to {path.name} ({error.strerror or error}); "
                                  "it still holds the previous checkpoint") from error

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
