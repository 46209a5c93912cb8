"""What is known about an item by its pid: its source, its title and its image paths, read from
one-item-a-line files and the dataset's text and image folders. The evaluation report, ``Retriever``
hits and the search page all describe items through this one lookup.

The title is the item's own text (goods: the title line; videos: title|text|caption), read from
its text file as evaluation reads it; the item file's query column is not the item's title. Paths
are joined under their roots only: a path that would leave its root is never shown.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

from real20m.datasets.annotations import SOURCES, UnsafePathError, load_items, safe_join
from real20m.datasets.layout import relative_shard_path, shard_path


@dataclass(frozen=True)
class ItemView:
    """One item as a page shows it; ``problem`` says why there is no title (None when there is one)."""

    pid: int
    source: str | None
    title: str | None
    images: tuple[str, ...]
    problem: str | None = None

    def display_title(self) -> str:
        return self.title if self.title else f"{self.pid} ({self.problem or 'empty title'})"


def sibling_text_root(image_root: str | None) -> str | None:
    """``<source>/text`` next to ``<source>/images``, where the Real400K layout keeps the text files."""
    if image_root and os.path.basename(os.path.normpath(image_root)) == "images":
        return os.path.join(os.path.dirname(os.path.normpath(image_root)), "text")
    return None


@dataclass(frozen=True)
class ItemFolders:
    """The image and text folders of each source; a missing text folder defaults to the one beside
    the source's image folder."""

    image_roots: Mapping[str, str | None]
    text_roots: Mapping[str, str | None]

    @classmethod
    def of(cls, image_roots: Mapping[str, str | None], text_roots: Mapping[str, str | None]) -> "ItemFolders":
        return cls(dict(image_roots), {source: text_roots.get(source) or sibling_text_root(image_roots.get(source))
                                       for source in SOURCES})


class ItemLookup:
    """pid -> ``ItemView`` over one or more item files (the first that lists a pid describes it)."""

    def __init__(self, item_files: Sequence[str], folders: ItemFolders):
        self.tables = [load_items(path) for path in item_files]
        self.rows = [{int(pid): row for row, pid in enumerate(table.pids.tolist())} for table in self.tables]
        self.folders = folders

    def __contains__(self, pid) -> bool:
        return any(int(pid) in rows for rows in self.rows)

    @functools.lru_cache(maxsize=65536)
    def __call__(self, pid: int) -> ItemView:
        pid = int(pid)
        for table, rows in zip(self.tables, self.rows):
            if pid in rows:
                row = rows[pid]
                source = int(table.sources[row])
                _, frame_paths, text_path = table.fields(row)
                title, problem = self._title(pid, source, text_path)
                return ItemView(pid, SOURCES[source], title, self._images(pid, SOURCES[source], frame_paths), problem)
        return ItemView(pid, None, None, (), "not in the item files")

    def _title(self, pid: int, source: int, text_path: str | None) -> tuple[str | None, str | None]:
        # items.py imports torch: only a page that shows titles pays for that.
        from real20m.datasets.items import item_text
        root = self.folders.text_roots.get(SOURCES[source])
        if not root:
            return None, f"no text root for {SOURCES[source]}"
        try:
            path = safe_join(root, text_path) if text_path else shard_path(root, pid, "txt")
        except UnsafePathError:
            return None, "text path outside the text root"
        if not os.path.isfile(path):
            return None, "no text file"
        return item_text(path, source, []) or None, None

    def _images(self, pid: int, source: str, frame_paths: list[str] | None) -> tuple[str, ...]:
        root = self.folders.image_roots.get(source)
        if not root:
            return ()
        paths = []
        for relative in frame_paths or [relative_shard_path(pid, "jpg")]:
            try:
                paths.append(safe_join(root, relative))
            except UnsafePathError:
                continue
        return tuple(paths)
