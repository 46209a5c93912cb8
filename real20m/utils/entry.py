"""What the command-line entry points share: one-line errors for bad input files, and --version.

The messages of the project's input errors already name the file (and line) and the reason, so a
traceback adds nothing but noise; exit status 2 tells scripts "fix the input", not "it crashed".
"""
import argparse
import os
import sys
from typing import Callable, TypeVar

from real20m import __version__
from real20m.errors import InputError

INPUT_ERROR_STATUS = 2
Result = TypeVar("Result")


# A path the user gave that cannot be read: what went wrong, and what to do about it.
PATH_ERRORS = {
    FileNotFoundError: "no such file or folder",
    NotADirectoryError: "not a folder",
    IsADirectoryError: "a folder, where a file is expected",
    PermissionError: "permission denied",
}
PATH_ADVICE = "check the path (DATA_ROOT / --data_root, or the option or variable that names it)"


def path_error_line(error: OSError) -> str:
    """``<path>: <what is wrong>; <what to do>`` for an OSError that names its file."""
    reason = next((text for kind, text in PATH_ERRORS.items() if isinstance(error, kind)), error.strerror)
    return f"{error.filename}: {reason}; {PATH_ADVICE}"


def exit_on_input_error(main: Callable[[], Result]) -> Result:
    """Run ``main`` and return its result; an ``InputError``, or a missing or unreadable file or
    folder, becomes one line on stderr and exit status 2."""
    try:
        return main()
    except InputError as error:
        _exit_with_line(str(error))
    except tuple(PATH_ERRORS) as error:
        if error.filename is None:
            raise
        _exit_with_line(path_error_line(error))


def _exit_with_line(message: str) -> None:
    rank = f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", 1)) > 1 else ""
    print(f"{rank}error: {message}", file=sys.stderr)
    sys.exit(INPUT_ERROR_STATUS)


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """``--version``: print ``<prog> <package version>`` and exit."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
