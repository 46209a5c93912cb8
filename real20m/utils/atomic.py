"""Files that appear whole or not at all.

A file is written under a temporary name in its destination folder and then renamed over the
destination (``os.replace`` is atomic on POSIX), so a reader, or a rerun after a crash or a full
disk, sees either the previous file or the complete new one. The temporary goes whatever happens.
``durable`` also flushes the data and the rename to the disk (checkpoints: a power cut must not
lose the last one).
"""
import contextlib
import os
import uuid
from pathlib import Path
from typing import IO, Iterator


def hidden_temp_path(path) -> str:
    """A hidden name next to ``path``, unique per writer, that never matches the final names, so
    readers ignore a leftover and concurrent writers (every rank at once) never share one."""
    path = Path(path)
    return str(path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"))


def fsync_directory(directory) -> None:
    """Make a rename in ``directory`` durable (POSIX keeps it in the directory entry)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(temp, path, durable: bool = False) -> None:
    """Rename the complete file ``temp`` over ``path``."""
    os.replace(temp, path)
    if durable:
        fsync_directory(Path(path).parent)


@contextlib.contextmanager
def atomic_path(path, temp=None, durable: bool = False) -> Iterator[str]:
    """Yield a temporary path (``temp``, else a hidden unique one) for the caller to write; when the
    block ends without an error it becomes ``path``. The temporary is removed in every case."""
    temp = str(temp) if temp is not None else hidden_temp_path(path)
    try:
        yield temp
        publish(temp, path, durable)
    finally:
        with contextlib.suppress(OSError):   # gone already, or never made: the block's own error says why
            os.remove(temp)


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", temp=None, durable: bool = False, encoding: str | None = None) -> Iterator[IO]:
    """``open`` for writing that replaces ``path`` only with a complete file (see ``atomic_path``);
    ``durable`` fsyncs the data before the rename and the rename after it."""
    with atomic_path(path, temp, durable) as temp_path, open(temp_path, mode, encoding=encoding) as file:
        yield file
        if durable:
            file.flush()
            os.fsync(file.fileno())
