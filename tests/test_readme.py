"""The README speaks to a user of a clone: nothing it points to may be missing from one."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_names_no_folder_outside_the_clone_and_no_issue_number():
    text = README.read_text(encoding="utf-8")
    assert "../shared" not in text
    assert not re.search(r"\bissues? #\d+|\(#\d+\)|\bissue \d+\b", text, re.IGNORECASE)


def test_the_readme_says_how_to_reach_the_virtual_environment():
    assert ". .venv/bin/activate" in README.read_text(encoding="utf-8")
