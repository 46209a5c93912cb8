"""Logging set-up: the main rank talks (console + log file), other ranks only warn."""
import logging
import sys
from pathlib import Path

LOGGER_NAME = "real20m"
FORMAT = "%(asctime)s %(levelname)s [rank %(rank)d] %(name)s: %(message)s"


class _RankFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def setup_logging(output_dir, rank: int) -> logging.Logger:
    """The "real20m" logger; rank 0 logs INFO to stdout and <output_dir>/log.txt, others WARNING to stderr.

    Calling it again replaces the handlers (no duplicated lines).
    """
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = False
    formatter = logging.Formatter(FORMAT)
    if rank == 0:
        logger.setLevel(logging.INFO)
        handlers = [logging.StreamHandler(sys.stdout)]
        if output_dir is not None:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            handlers.append(logging.FileHandler(Path(output_dir) / "log.txt", encoding="utf-8"))
    else:
        logger.setLevel(logging.WARNING)
        handlers = [logging.StreamHandler(sys.stderr)]
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(_RankFilter(rank))
        logger.addHandler(handler)
    return logger
