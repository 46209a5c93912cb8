import logging

import pytest

from real20m.utils.logging import LOGGER_NAME, setup_logging


@pytest.fixture(autouse=True)
def detach_handlers():
    """The handlers hold pytest's captured streams and a file in tmp_path: drop them after each test."""
    yield
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def test_main_rank_logs_info_to_console_and_file(tmp_path, capsys):
    logger = setup_logging(tmp_path / "run", rank=0)
    logger.info("epoch 1 done")
    logger = setup_logging(tmp_path / "run", rank=0)  # a second call must not duplicate lines
    logger.info("epoch 2 done")
    for handler in logger.handlers:
        handler.flush()
    printed = capsys.readouterr().out
    assert printed.count("epoch 2 done") == 1 and "[rank 0]" in printed
    log_text = (tmp_path / "run" / "log.txt").read_text(encoding="utf-8")
    assert "epoch 1 done" in log_text and "epoch 2 done" in log_text


def test_other_ranks_only_warn(tmp_path, capsys):
    logger = setup_logging(tmp_path, rank=1)
    assert logger.level == logging.WARNING
    logger.info("chatty")
    logger.warning("worker 1 lost a file")
    captured = capsys.readouterr()
    assert "chatty" not in captured.err + captured.out
    assert "[rank 1]" in captured.err and "worker 1 lost a file" in captured.err
    assert not (tmp_path / "log.txt").exists()
