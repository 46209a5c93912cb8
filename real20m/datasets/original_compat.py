"""The original release's evaluation inputs, rebuilt for ``--compat original``.

The specification is ``fixtures/upstream_pipeline_tiny/README.md`` ("Quirks of the original"), whose
reference outputs were computed by the original code. The rules below are kept deliberately
literal, including their oddities: the released checkpoints were evaluated on exactly these inputs.

* Text files are read as Python's text mode reads them (``readlines()`` with universal
  newlines): every line but possibly the last keeps its ``'\\n'``, and that newline takes part in
  the ``null`` test, the duplicate test and the 40/80-character cuts.
* Frames: index ``floor((2i+1)n / (2c))`` of the n listed paths; an unreadable frame is skipped and
  the clip is padded at the end with the last frame that loaded.

Only pure rules live here (no file access), so they can be tested on literal strings.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

DEFAULT, ORIGINAL = "default", "original"
COMPAT_MODES = (DEFAULT, ORIGINAL)

GOODS_LINE_COUNT = 6  # itemid, category, brand, entity, title, description
GOODS_TITLE_LINE = 4
NULL = "null"
BODY_CHARS = 40
TEXT_CHARS = 80

# A line as text mode yields it: up to and including '\n', or a last piece without one.
_TEXT_MODE_LINE = re.compile(r"[^\n]*\n|[^\n]+")


def check_compat(compat: str) -> str:
    if compat not in COMPAT_MODES:
        raise ValueError(f"compat must be one of {COMPAT_MODES}, got {compat!r}")
    return compat


def text_mode_lines(text: str) -> list[str]:
    """``open(path).readlines()`` of a file whose decoded content is ``text``.

    Universal newlines turn '\\r\\n' and a lone '\\r' into '\\n'; lines split at '\\n' only
    (not at the other characters ``str.splitlines`` knows) and keep it."""
    return _TEXT_MODE_LINE.findall(text.replace("\r\n", "\n").replace("\r", "\n"))


def goods_title(lines: Sequence[str]) -> str:
    """Line 5 stripped, only for a file of exactly 6 lines; ``null`` is kept as the word."""
    return lines[GOODS_TITLE_LINE].strip() if len(lines) == GOODS_LINE_COUNT else ""


def video_title(lines: Sequence[str], keep: tuple[bool, bool, bool] = (True, True, True)) -> str:
    """``title | text[:40] | caption`` of (caption, title, text) lines, cut at 80 characters.

    A field is dropped only when it is exactly ``null``: with its newline attached it is text.
    The text is dropped when it equals the title, newline included. A line the file does not
    have is left out (the specification has no such file; this is our assumption). ``keep``
    (title, text, caption): the fields training keeps."""
    caption, title, body = (list(lines[:3]) + [None] * 3)[:3]
    keep_title, keep_body, keep_caption = keep
    parts = []
    if keep_title and _present(title):
        parts.append(title)
    if keep_body and _present(body) and body != title:
        parts.append(body[:BODY_CHARS])
    if keep_caption and _present(caption):
        parts.append(caption)
    return "|".join(parts)[:TEXT_CHARS]


# The original's training text: goods titles of at least 10 characters are perturbed with
# probability 0.6 at 20% of their positions; each video field is kept with probability 0.8.
PERTURB_MIN_CHARS = 10
PERTURB_ABOVE = 0.4
PERTURBED_FRACTION = 0.2
VIDEO_FIELD_KEEP = 0.8


def training_goods_title(lines: Sequence[str], rng) -> str:
    """The goods title as the original's training reads it: some positions doubled, deleted or
    followed by a space (one third each)."""
    title = goods_title(lines)
    if len(title) < PERTURB_MIN_CHARS or rng.random() <= PERTURB_ABOVE:
        return title
    positions = set(rng.choice(len(title), size=int(len(title) * PERTURBED_FRACTION), replace=False).tolist())
    pieces = []
    for index, char in enumerate(title):
        if index not in positions:
            pieces.append(char)
            continue
        edit = int(rng.integers(3))
        pieces.append((char * 2, "", char + " ")[edit])
    return "".join(pieces)


def training_video_title(lines: Sequence[str], rng) -> str:
    """The video text as the original's training builds it: each of title, text and caption kept
    with probability 0.8 (all three may go), ``null`` recognised only as evaluation does."""
    keep = tuple(bool(draw < VIDEO_FIELD_KEEP) for draw in rng.random(3))
    return video_title(lines, keep)


def _present(field: str | None) -> bool:
    return field is not None and field != NULL


def frame_indices(num_listed: int, clip_length: int) -> list[int]:
    """``floor((2i+1) n / (2c))`` for i < c: the original's ``int((2i+1) * (n/c) / 2)`` without floats.

    A goods item (c = 1) gets the middle listed path, ``n // 2``."""
    if num_listed < 1:
        raise ValueError("an item needs at least one listed frame")
    return [(2 * slot + 1) * num_listed // (2 * clip_length) for slot in range(clip_length)]


def skip_unreadable_and_pad(indices: Sequence[int], readable: Callable[[int], bool]) -> list[int] | None:
    """The indices that load, in order, padded at the end with the last of them; None if none loads.

    The original does not replace an unreadable frame: the later frames move forward."""
    used = [index for index in indices if readable(index)]
    if not used:
        return None
    return used + [used[-1]] * (len(indices) - len(used))
