"""What the command-line entry points share: one-line errors for bad input files, and --version.

The messages of the project's input errors already name the file (and line) and the reason, so a
traceback adds nothing but noise; exit status 2 tells scripts "fix the input", not "it crashed".
"""
import argparse
import os
import sys
from typing import Callable

from real20m import __version__

INPUT_ERROR_STATUS = 2


def exit_on_input_error(main: Callable[[], None], input_errors: tuple[type[Exception], ...]) -> None:
    """Run ``main``; one of ``input_errors`` becomes one line on stderr and exit status 2."""
    try:
        main()
    except input_errors as error:
        rank = f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", 1)) > 1 else ""
        print(f"{rank}error: {error}", file=sys.stderr)
        sys.exit(INPUT_ERROR_STATUS)


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """``--version``: print ``<prog> <package version>`` and exit."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
