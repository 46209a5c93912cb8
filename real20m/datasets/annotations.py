"""Readers for the Real400K / Real20M annotation files (see DESIGN.md, "Annotation files").

The big files (a query-grouped train file has ~20M lines, an item file one line per item) are
parsed with vectorised numpy operations over large byte chunks and stored compactly: numpy
arrays plus one bytes buffer with offsets, never one Python object per line. Besides saving
memory this keeps DataLoader workers from copying the tables: a Python object per line would
have its reference count touched on every access, dirtying the pages shared after fork().

Errors name the file, the 1-based line number and the offending text:
``AnnotationError("<path>:<lineno>: <reason>: <line text>")``. Blank lines are skipped.
A query-grouped line whose goods and video lists are both ``None`` is an error (it cannot give
a sample). Texts are UTF-8; they are decoded lazily, invalid bytes replaced.
"""
from __future__ import annotations

import codecs
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from real20m.errors import InputError

SOURCES = ("goods", "photo")
GOODS, PHOTO = 0, 1


@dataclass(frozen=True)
class QueryLanguage:
    """Where the release keeps one language's texts: the query-grouped train file's column that
    holds the query, and the ending of each item's text file."""

    query_column: int
    text_ending: str


# data.query_language -> its files. The release's English variant adds the English query as a 4th
# column of the train file and keeps <pid>_eng.txt (same line layout) beside each <pid>.txt.
QUERY_LANGUAGES = {"zh": QueryLanguage(query_column=0, text_ending=".txt"),
                   "en": QueryLanguage(query_column=3, text_ending="_eng.txt")}

_CHUNK_BYTES = 16 << 20
_NEWLINE, _TAB, _CR, _COMMA, _ZERO, _NINE = 10, 9, 13, 44, 48, 57
_NONE = np.frombuffer(b"None", dtype=np.uint8)
_MAX_DIGITS = 18  # int64 holds every 18-digit number
_POW10 = 10 ** np.arange(_MAX_DIGITS, dtype=np.int64)


class AnnotationError(InputError, ValueError):
    """A malformed annotation line; the message is ``<path>:<lineno>: <reason>: <line text>``."""


class QueryFileError(AnnotationError):
    """A text-query file (``qid \\t query text``) that cannot be read; the message names the line."""


class UnsafePathError(InputError, ValueError):
    """A relative path from an annotation file that is absolute or climbs out of its root."""


def safe_join(root: str, relative: str) -> str:
    """``root/relative``, refusing absolute paths and paths that escape ``root`` through ``..``."""
    if os.path.isabs(relative) or relative.startswith(("/", "\\")):
        raise UnsafePathError(f"absolute path {relative!r} not allowed; paths must be relative to {root!r}")
    normalised = os.path.normpath(relative)
    if normalised == ".." or normalised.startswith(".." + os.sep) or normalised.startswith("../"):
        raise UnsafePathError(f"path {relative!r} escapes its root {root!r}")
    return os.path.join(root, normalised)


def parse_query_id(ref: str) -> int:
    """Query id of a ground-truth reference: the basename up to the first ``_`` or ``.``."""
    base = os.path.basename(ref.strip())
    return _parse_int(base.split("_", 1)[0].split(".", 1)[0], ref)


def parse_doc_id(ref: str) -> int:
    """Document id of a ground-truth reference: the basename up to the first ``.``.

    A frame suffix ``_<k>`` is dropped too, so a frame path names its video
    (``video/images/12/1000012_3.jpg`` -> 1000012, as DESIGN.md specifies for queries and docs)."""
    stem = os.path.basename(ref.strip()).split(".", 1)[0]
    video, _, frame = stem.partition("_")
    return _parse_int(video if frame.isdigit() else stem, ref)


def _parse_int(text: str, ref: str) -> int:
    if not text.isdigit():
        raise ValueError(f"no numeric id in reference {ref!r}")
    return int(text)


# --------------------------------------------------------------------------- small line files


def load_ground_truth(path) -> dict[int, list[int]]:
    """``query_ref \\t doc_ref,doc_ref`` -> {query id: ordered unique doc ids}.

    A query listed twice has its doc lists merged (first occurrence order kept)."""
    truth: dict[int, list[int]] = {}
    for lineno, line in _text_lines(path):
        fields = line.split("\t")
        if len(fields) != 2:
            _raise(path, lineno, f"expected 2 tab-separated fields, got {len(fields)}", line)
        try:
            query = parse_query_id(fields[0])
            docs = [parse_doc_id(ref) for ref in fields[1].split(",") if ref.strip()]
        except ValueError as error:
            _raise(path, lineno, str(error), line)
        merged = truth.setdefault(query, [])
        merged.extend(doc for doc in dict.fromkeys(docs) if doc not in merged)
    return truth


def read_queries(path) -> tuple[np.ndarray, list[str]]:
    """``qid \\t query text`` one a line (``test_file/queries.txt``) -> (qids int64, texts).

    The qid is an integer, unique in the file; the text is everything after the first tab."""
    qids, texts, seen = [], [], {}
    for lineno, line in _text_lines(path):
        qid, tab, text = line.partition("\t")
        if not tab or not qid.strip().lstrip("-").isdigit():
            raise QueryFileError(f"{path}:{lineno}: expected 'qid<TAB>query text' with an integer qid, "
                                 f"got {line[:120]!r}")
        if not text.strip():
            raise QueryFileError(f"{path}:{lineno}: empty query text")
        qid = int(qid)
        if qid in seen:
            raise QueryFileError(f"{path}:{lineno}: qid {qid} already on line {seen[qid]}")
        seen[qid] = lineno
        qids.append(qid)
        texts.append(text)
    return np.asarray(qids, dtype=np.int64), texts


@dataclass
class ClusterTable:
    """Query clusters of ``cluster.txt`` (``query \\t level0 \\t level1 \\t level2``).

    ``labels[i, level]`` is an integer code of the label at that level for query ``queries[i]``."""

    queries: list[str]
    labels: np.ndarray  # (n_queries, 3) int64
    names: tuple[tuple[str, ...], ...] = ()  # per level, the label of each code

    def labels_for(self, queries, level: int = 0) -> np.ndarray:
        """Cluster code per query text; -1 for queries missing from the cluster file."""
        row_of = {query: row for row, query in enumerate(self.queries)}
        rows = np.array([row_of.get(query, -1) for query in queries], dtype=np.int64)
        codes = self.labels[np.maximum(rows, 0), level]
        return np.where(rows >= 0, codes, -1)


def load_clusters(path) -> ClusterTable:
    """Read ``cluster.txt``. Labels are arbitrary strings, coded per level in order of appearance.

    Cluster files have one line per distinct query (far fewer than train lines), and are only
    read for hard-sample training, so a plain line loop is fine here."""
    queries: list[str] = []
    codes: list[tuple[int, int, int]] = []
    label_codes: list[dict[str, int]] = [{}, {}, {}]
    for lineno, line in _text_lines(path):
        fields = line.split("\t")
        if len(fields) != 4 or not fields[0]:
            _raise(path, lineno, "expected 'query \\t level0 \\t level1 \\t level2'", line)
        queries.append(fields[0])
        codes.append(tuple(table.setdefault(label, len(table)) for table, label in zip(label_codes, fields[1:])))
    return ClusterTable(queries, np.array(codes, dtype=np.int64).reshape(-1, 3),
                        tuple(tuple(table) for table in label_codes))


def _text_lines(path):
    """(1-based line number, line) for every non-blank line, newline stripped."""
    with open(path, encoding="utf-8-sig", errors="strict", newline="") as handle:
        try:
            for lineno, line in enumerate(handle, start=1):
                line = line.rstrip("\r\n")
                if line.strip():
                    yield lineno, line
        except UnicodeDecodeError as error:
            raise AnnotationError(f"{path}: not valid UTF-8 ({error})") from error


def _raise(path, lineno: int, reason: str, text) -> None:
    if isinstance(text, (bytes, bytearray, np.ndarray)):
        text = bytes(text).decode("utf-8", errors="replace")
    raise AnnotationError(f"{path}:{lineno}: {reason}: {text[:300]}")


# --------------------------------------------------------------------------- compact tables


@dataclass
class QueryGroups:
    """The query-grouped train file: one query per row with its goods ids and video ids (CSR)."""

    path: str
    query_bytes: np.ndarray  # uint8, every query's UTF-8 bytes back to back
    query_offsets: np.ndarray  # int64 (n + 1)
    indptr: tuple[np.ndarray, np.ndarray]  # per source (goods, photo): int64 (n + 1)
    ids: tuple[np.ndarray, np.ndarray]  # per source: int64 pids

    def __len__(self) -> int:
        return len(self.query_offsets) - 1

    def query(self, row: int) -> str:
        start, end = self.query_offsets[row], self.query_offsets[row + 1]
        return self.query_bytes[start:end].tobytes().decode("utf-8", errors="replace")

    def member_counts(self, source: int) -> np.ndarray:
        return np.diff(self.indptr[source])

    def member_counts_at(self, row: int, source: int) -> int:
        return int(self.indptr[source][row + 1] - self.indptr[source][row])

    def member(self, row: int, source: int, index: int) -> int:
        count = self.member_counts_at(row, source)
        if not 0 <= index < count:
            raise IndexError(f"row {row} has {count} {SOURCES[source]} ids, asked for #{index}")
        return int(self.ids[source][self.indptr[source][row] + index])


@dataclass
class ItemTable:
    """A one-item-a-line file: pid, source code and the raw ``query\\tframe_paths\\ttext_path`` bytes."""

    path: str
    pids: np.ndarray  # int64 (n)
    sources: np.ndarray  # int8 (n), index into SOURCES
    text_bytes: np.ndarray  # uint8
    text_offsets: np.ndarray  # int64 (n + 1)

    def __len__(self) -> int:
        return len(self.pids)

    def fields(self, row: int) -> tuple[str, list[str] | None, str | None]:
        """(query, frame paths or None, text path or None); ``None``/empty fields mean "derive from pid"."""
        start, end = self.text_offsets[row], self.text_offsets[row + 1]
        query, frames, text_path = self.text_bytes[start:end].tobytes().decode("utf-8", errors="replace").split("\t")
        frame_paths = [p for p in frames.split(",") if p] if frames not in ("", "None") else None
        return query, frame_paths or None, text_path if text_path not in ("", "None") else None

    def query(self, row: int) -> str:
        return self.fields(row)[0]


def load_query_groups(path, language: str = "zh") -> QueryGroups:
    """Parse ``query \\t goods_ids \\t video_ids [\\t English query]`` (id lists comma-separated or
    ``None``); the rows' query is the one of ``language`` (a key of QUERY_LANGUAGES)."""
    path = os.fspath(path)
    n_fields = _field_count(path)
    column = QUERY_LANGUAGES[language].query_column
    if column >= n_fields:
        raise AnnotationError(f"{path}: query language {language!r} reads the query from field {column + 1}, "
                              f"but the lines have {n_fields} fields")
    newlines, commas = _count_bytes(path)
    queries = _Buffer(np.uint8, os.path.getsize(path))
    query_offsets = _Offsets(newlines + 1)
    indptr = [_Offsets(newlines + 1) for _ in SOURCES]
    ids = [_Buffer(np.int64, commas + newlines + 1) for _ in SOURCES]
    for chunk, first_lineno in _line_chunks(path):
        starts, ends, linenos = _fields(chunk, n_fields, path, first_lineno)
        _require_nonempty(chunk, starts[:, column], ends[:, column], linenos, path, "empty query")
        parsed = [_parse_id_lists(chunk, starts[:, col], ends[:, col], linenos, path) for col in (1, 2)]
        both_none = (parsed[0][0] == 0) & (parsed[1][0] == 0)
        if both_none.any():
            row = int(np.argmax(both_none))
            _raise(path, linenos[row], "both id lists are None", _line_around(chunk, starts[row, 0]))
        query_bytes, query_lengths = _gather(chunk, starts[:, column], ends[:, column])
        queries.extend(query_bytes)
        query_offsets.extend(query_lengths)
        for source, (source_counts, source_ids) in enumerate(parsed):
            indptr[source].extend(source_counts)
            ids[source].extend(source_ids)
    return QueryGroups(
        path=path,
        query_bytes=queries.finish(),
        query_offsets=query_offsets.finish(),
        indptr=tuple(offsets.finish() for offsets in indptr),
        ids=tuple(buffer.finish() for buffer in ids),
    )


def load_items(path) -> ItemTable:
    """Parse ``pid \\t source \\t query \\t frame_paths \\t text_path`` (source goods|photo)."""
    path = os.fspath(path)
    newlines, _ = _count_bytes(path)
    pids = _Buffer(np.int64, newlines + 1)
    sources = _Buffer(np.int8, newlines + 1)
    texts = _Buffer(np.uint8, os.path.getsize(path))
    text_offsets = _Offsets(newlines + 1)
    for chunk, first_lineno in _line_chunks(path):
        starts, ends, linenos = _fields(chunk, 5, path, first_lineno)
        counts, chunk_pids = _parse_id_lists(chunk, starts[:, 0], ends[:, 0], linenos, path)
        if (counts != 1).any():
            row = int(np.argmax(counts != 1))
            _raise(path, linenos[row], "pid must be one integer", _line_around(chunk, starts[row, 0]))
        sources.extend(_parse_sources(chunk, starts[:, 1], ends[:, 1], linenos, path))
        _check_paths(chunk, starts, ends, linenos, path)
        text, lengths = _gather(chunk, starts[:, 2], ends[:, 4])
        texts.extend(text)
        text_offsets.extend(lengths)
        pids.extend(chunk_pids)
    return ItemTable(path, pids.finish(), sources.finish(), texts.finish(), text_offsets.finish())


# --------------------------------------------------------------------------- formats


@dataclass(frozen=True)
class AnnotationFormat:
    """One way of writing a train or test file: which files it reads, and how."""

    name: str
    reads: Callable[[str], bool]                          # does this format read the file at path?
    load: Callable[[str, str], "QueryGroups | ItemTable"]  # (path, query language) -> table
    one_item_a_line: bool                                 # an item file, as evaluation needs


def _reads_tab_fields(*counts: int) -> Callable[[str], bool]:
    return lambda path: _first_line_fields(path)[1] in counts


# The registry of annotation formats; the first whose ``reads`` accepts a file reads it.
ANNOTATION_FORMATS: dict[str, AnnotationFormat] = {
    # query \t goods ids \t video ids [\t English query]
    "query_groups": AnnotationFormat("query_groups", _reads_tab_fields(3, 4), load_query_groups, False),
    # pid \t source \t query \t frame paths \t text path
    "items": AnnotationFormat("items", _reads_tab_fields(5), lambda path, language: load_items(path), True),
}


def annotation_format(path) -> AnnotationFormat:
    """The registered format that reads ``path``; an unknown layout names the file and line."""
    path = os.fspath(path)
    for annotation in ANNOTATION_FORMATS.values():
        if annotation.reads(path):
            return annotation
    lineno, n_fields, line = _first_line_fields(path)
    if lineno is None:
        raise AnnotationError(f"{path}: no annotation lines")
    _raise(path, lineno, f"expected 3 or 4 (query-grouped) or 5 (item) fields, got {n_fields}", line)


def _field_count(path) -> int:
    """Fields of the first non-blank line of a tab-separated file of the built-in formats."""
    annotation_format(path)
    return _first_line_fields(path)[1]


def _first_line_fields(path) -> tuple[int | None, int | None, bytes]:
    """(line number, tab-separated fields, bytes) of the first non-blank line; Nones when there is none."""
    with open(path, "rb") as handle:
        for lineno, line in enumerate(handle, start=1):
            line = line.rstrip(b"\r\n")
            if line.strip():
                return lineno, line.count(b"\t") + 1, line
    return None, None, b""


# --------------------------------------------------------------------------- vectorised parsing


class _Buffer:
    """Append-only numpy array with a known upper bound on its size.

    The capacity is allocated once (untouched pages cost no memory) and trimmed in place at the
    end, so the parsed table never exists twice in memory as a list of chunks plus a concatenation."""

    def __init__(self, dtype, capacity: int):
        self.array = np.empty(max(int(capacity), 1), dtype=dtype)
        self.used = 0

    def extend(self, values: np.ndarray) -> None:
        self.array[self.used : self.used + len(values)] = values
        self.used += len(values)

    def finish(self) -> np.ndarray:
        self.array.resize(self.used, refcheck=False)  # realloc shrinks in place
        return self.array


class _Offsets(_Buffer):
    """CSR offsets (leading 0) built from per-row lengths."""

    def __init__(self, rows: int):
        super().__init__(np.int64, rows + 1)
        self.extend(np.zeros(1, dtype=np.int64))

    def extend(self, lengths: np.ndarray) -> None:
        if self.used:
            lengths = self.array[self.used - 1] + np.cumsum(lengths)
        super().extend(lengths)


def _count_bytes(path) -> tuple[int, int]:
    """Newlines and commas in the file: upper bounds for the table sizes."""
    newlines = commas = 0
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK_BYTES):
            array = np.frombuffer(block, dtype=np.uint8)
            newlines += int(np.count_nonzero(array == _NEWLINE))
            commas += int(np.count_nonzero(array == _COMMA))
    return newlines, commas


def _line_chunks(path):
    """(uint8 array of whole lines ending in '\\n', line number of its first line)."""
    first_lineno = 1
    with open(path, "rb") as handle:
        carry = handle.read(len(codecs.BOM_UTF8)).removeprefix(codecs.BOM_UTF8)
        while True:
            block = handle.read(_CHUNK_BYTES)
            data = carry + block
            if not block:
                if data:
                    yield np.frombuffer(data + b"\n", dtype=np.uint8), first_lineno
                return
            cut = data.rfind(b"\n") + 1
            carry = data[cut:]
            if cut:
                chunk = np.frombuffer(data[:cut], dtype=np.uint8)
                yield chunk, first_lineno
                first_lineno += int(np.count_nonzero(chunk == _NEWLINE))


def _fields(chunk, n_fields: int, path, first_lineno: int):
    """Field (start, end) byte offsets, shape (lines, n_fields), and line numbers of non-blank lines."""
    line_ends = np.flatnonzero(chunk == _NEWLINE)
    line_starts = np.concatenate([[0], line_ends[:-1] + 1])
    linenos = first_lineno + np.arange(len(line_ends), dtype=np.int64)
    has_cr = (line_ends > line_starts) & (chunk[line_ends - 1] == _CR)
    line_ends = line_ends - has_cr
    nonblank = line_ends > line_starts
    line_starts, line_ends, linenos = line_starts[nonblank], line_ends[nonblank], linenos[nonblank]
    tabs = np.flatnonzero(chunk == _TAB)
    tab_counts = np.searchsorted(tabs, line_ends) - np.searchsorted(tabs, line_starts)
    if (tab_counts != n_fields - 1).any():
        row = int(np.argmax(tab_counts != n_fields - 1))
        reason = f"expected {n_fields} tab-separated fields, got {tab_counts[row] + 1}"
        _raise(path, linenos[row], reason, _line_around(chunk, line_starts[row]))
    tabs = tabs.reshape(-1, n_fields - 1)  # blank lines hold no tabs, so rows align with lines
    starts = np.column_stack([line_starts, tabs + 1])
    ends = np.column_stack([tabs, line_ends])
    return starts, ends, linenos


def _line_text(chunk, start, end) -> bytes:
    return chunk[start:end].tobytes()


def _line_around(chunk, position) -> bytes:
    """The whole line holding byte ``position`` (error messages only)."""
    data = chunk.tobytes()
    start = data.rfind(b"\n", 0, int(position)) + 1
    end = data.find(b"\n", int(position))
    return data[start:end].rstrip(b"\r")


def _require_nonempty(chunk, starts, ends, linenos, path, reason: str) -> None:
    empty = ends <= starts
    if empty.any():
        row = int(np.argmax(empty))
        _raise(path, linenos[row], reason, _line_around(chunk, starts[row]))


def _gather(chunk, starts, ends) -> tuple[np.ndarray, np.ndarray]:
    """Bytes of the ranges [starts, ends) back to back, and each range's length."""
    lengths = ends - starts
    nonempty = lengths > 0
    delta = np.zeros(len(chunk) + 1, dtype=np.int8)
    delta[starts[nonempty]] = 1
    delta[ends[nonempty]] = -1  # ranges are separated by at least one byte, never adjacent
    inside = np.cumsum(delta[:-1], dtype=np.int8).view(np.bool_)
    return chunk[inside], lengths


def _parse_id_lists(chunk, starts, ends, linenos, path) -> tuple[np.ndarray, np.ndarray]:
    """Parse comma-separated integer lists (or ``None``) in [starts, ends): (count per field, ids)."""
    lengths = ends - starts
    is_none = lengths == len(_NONE)
    if is_none.any():
        candidates = np.flatnonzero(is_none)
        words = chunk[starts[candidates, None] + np.arange(len(_NONE))]
        is_none[candidates] = (words == _NONE).all(axis=1)
    active = ~is_none
    counts = np.zeros(len(starts), dtype=np.int64)
    if not active.any():
        return counts, np.zeros(0, dtype=np.int64)
    _require_nonempty(chunk, starts, np.where(active, ends, starts + 1), linenos, path, "empty id list (write None)")
    # Include each field's terminator (tab, '\r' or '\n') so every field ends in a separator.
    data, field_lengths = _gather(chunk, starts[active], ends[active] + 1)
    field_ends = np.cumsum(field_lengths)
    is_digit = (data >= _ZERO) & (data <= _NINE)
    bad = ~is_digit & (data != _COMMA)
    bad[field_ends - 1] = False
    separators = np.flatnonzero(~is_digit)
    token_starts = np.concatenate([[0], separators[:-1] + 1])
    token_lengths = separators - token_starts
    bad_token = (token_lengths == 0) | (token_lengths > _MAX_DIGITS)
    if bad.any() or bad_token.any():
        position = min(
            int(np.argmax(bad)) if bad.any() else len(data),
            int(separators[np.argmax(bad_token)]) if bad_token.any() else len(data),
        )
        row = np.flatnonzero(active)[np.searchsorted(field_ends, position, side="right")]
        _raise(path, linenos[row], "invalid id list (expected comma-separated integers or None)",
               _line_around(chunk, starts[row]))
    token_of_byte = np.cumsum(~is_digit) - ~is_digit
    digit_positions = np.flatnonzero(is_digit)
    exponents = separators[token_of_byte[digit_positions]] - digit_positions - 1
    contributions = (data[digit_positions].astype(np.int64) - _ZERO) * _POW10[exponents]
    ids = np.add.reduceat(contributions, np.concatenate([[0], np.cumsum(token_lengths[:-1])]))
    counts[active] = np.diff(np.searchsorted(separators, np.concatenate([[0], field_ends])))
    return counts, ids


def _parse_sources(chunk, starts, ends, linenos, path) -> np.ndarray:
    codes = np.full(len(starts), -1, dtype=np.int8)
    for code, name in enumerate(SOURCES):
        word = np.frombuffer(name.encode(), dtype=np.uint8)
        rows = np.flatnonzero(ends - starts == len(word))
        match = (chunk[starts[rows, None] + np.arange(len(word))] == word).all(axis=1)
        codes[rows[match]] = code
    if (codes < 0).any():
        row = int(np.argmax(codes < 0))
        name = _line_text(chunk, starts[row], ends[row]).decode("utf-8", errors="replace")
        _raise(path, linenos[row], f"unknown source {name!r} (expected one of {SOURCES})",
               _line_around(chunk, starts[row]))
    return codes


def _check_paths(chunk, starts, ends, linenos, path) -> None:
    """Refuse absolute or ``..`` frame/text paths at load time, not deep inside a worker.

    Only lines whose path fields contain '/' at a path start or the bytes '..' can be unsafe, so
    the exact (Python) check runs on those few candidates only."""
    first, last = starts[:, 3], ends[:, 4]
    dots = np.flatnonzero((chunk[:-1] == ord(".")) & (chunk[1:] == ord(".")))
    slashes = np.flatnonzero(chunk == ord("/"))
    slash_at_start = slashes[(slashes == 0) | np.isin(chunk[slashes - 1], [_TAB, _COMMA])]
    suspects = np.concatenate([dots, slash_at_start])
    rows = np.unique(np.searchsorted(last, suspects))
    rows = rows[rows < len(first)]
    for row in rows:
        text = _line_text(chunk, first[row], last[row]).decode("utf-8", errors="replace")
        frames, text_path = text.split("\t")
        for relative in [p for p in frames.split(",") if p] + [text_path]:
            if relative in ("", "None"):
                continue
            try:
                safe_join("<root>", relative)
            except UnsafePathError as error:
                raise UnsafePathError(f"{path}:{linenos[row]}: {error}: {text}") from None
