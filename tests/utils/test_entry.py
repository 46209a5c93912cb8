import errno
import os

import pytest

from real20m.errors import InputError
from real20m.utils.entry import INPUT_ERROR_STATUS, exit_on_input_error


class BadRecipeError(InputError, ValueError):
    """Any error of the project that means "the input is wrong"."""


def fail_with(error):
    def main():
        raise error
    return main


def test_a_result_passes_through():
    assert exit_on_input_error(lambda: 42) == 42


def test_an_input_error_is_its_message_on_one_line_with_status_2(capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit) as stop:
        exit_on_input_error(fail_with(BadRecipeError("recipe.yaml:3: no flour")))
    assert stop.value.code == INPUT_ERROR_STATUS == 2
    assert capsys.readouterr().err == "error: recipe.yaml:3: no flour\n"


def test_a_missing_file_is_named_with_advice(capsys):
    with pytest.raises(SystemExit):
        exit_on_input_error(fail_with(FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "/no/such")))
    assert capsys.readouterr().err.startswith("error: /no/such: no such file or folder; check the path")


def test_a_rank_of_a_multi_process_run_says_which_it_is(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit):
        exit_on_input_error(fail_with(BadRecipeError("bad")))
    assert capsys.readouterr().err == "[rank 1] error: bad\n"


@pytest.mark.parametrize("error", [ValueError("a bug"), RuntimeError("a crash"), OSError("no file name")])
def test_other_errors_keep_their_traceback(error):
    with pytest.raises(type(error)):
        exit_on_input_error(fail_with(error))
