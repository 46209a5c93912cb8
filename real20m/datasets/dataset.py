"""Train and evaluation datasets over the compact annotation tables.

Both hold numpy tables and a small ``ItemLoader``, so they pickle cheaply into DataLoader workers
and fork() shares the tables without copy-on-write churn.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .annotations import GOODS, PHOTO, QUERY_LANGUAGES, SOURCES, AnnotationError, ItemTable, QueryGroups, \
    annotation_format
from .categories import CATEGORY_KEY, IGNORED_LABEL, UNKNOWN_CATEGORY, CategoryLabels
from .items import ItemLoader, ItemRoots, goods_category, item_text, read_text_lines, shard_path
from .transforms import build_eval_transform, build_train_transform

MAX_REPLACEMENTS = 10
MAX_REJECTIONS = 10_000
# Sample source of the item-pair ablation: a goods item with a video of the same query.
PAIR = len(SOURCES)
# Rows left out of an epoch (no goods-video pair in item-pair mode).
NO_SAMPLE = -1


def item_roots(data) -> ItemRoots:
    return ItemRoots(data.goods_img_root, data.goods_text_root, data.photo_img_root, data.photo_text_root,
                     data.frameid_root, QUERY_LANGUAGES[data.query_language].text_ending)


class TrainDataset(torch.utils.data.Dataset):
    """Training samples addressed by ``SampleKey(row, source, member, seed)`` (see samplers.py).

    ``__getitem__`` returns ``{"pid","source","query","title","frames","issues"}``, and with
    ``categories`` the sample's goods-category class under "category" (categories.py). An item
    with no readable frame is replaced by a random item of the same source (drawn from the key's
    seed, so deterministic) and reported as ``("replaced_item", <its image path>)``."""

    def __init__(self, table: QueryGroups | ItemTable, loader: ItemLoader, cluster_file: str | None = None,
                 item_pairs: bool = False, categories: CategoryLabels | None = None):
        if item_pairs and not isinstance(table, QueryGroups):
            raise AnnotationError(f"{table.path}: item pairs (no query guidance) need the query-grouped train file")
        self.table = table
        self.loader = loader
        self.cluster_file = cluster_file
        self.item_pairs = item_pairs
        self.categories = categories

    @property
    def grouped(self) -> bool:
        return isinstance(self.table, QueryGroups)

    def __len__(self) -> int:
        return len(self.table)

    def epoch_samples(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(source, member) of every row for one epoch: one sample per query row / per item line.

        Item pairs: every query with goods and videos gives one PAIR sample (member = its goods
        item; the video is drawn from the sample's seed); the other rows give none (NO_SAMPLE)."""
        rows = len(self.table)
        if not self.grouped:
            return self.table.sources.astype(np.int8), np.zeros(rows, dtype=np.int64)
        goods, videos = self.table.member_counts(0), self.table.member_counts(1)
        if self.item_pairs:
            sources = np.where((goods > 0) & (videos > 0), PAIR, NO_SAMPLE).astype(np.int8)
            members = np.minimum((rng.random(rows) * goods).astype(np.int64), np.maximum(goods - 1, 0))
            return sources, members
        sources = np.where(goods > 0, 0, 1).astype(np.int8)
        both = (goods > 0) & (videos > 0)
        sources[both] = rng.integers(0, 2, size=int(both.sum()), dtype=np.int8)
        counts = np.where(sources == 0, goods, videos)
        members = np.minimum((rng.random(rows) * counts).astype(np.int64), counts - 1)
        return sources, members

    def row_queries(self) -> Iterator[str]:
        return (self.table.query(row) for row in range(len(self.table)))

    def __getitem__(self, key) -> dict:
        row, source, member, seed = key
        if source == PAIR:
            return self._pair(row, member, seed)
        rng = np.random.default_rng(seed)
        generator = torch.Generator().manual_seed(int(seed))
        issues = []
        for _ in range(MAX_REPLACEMENTS + 1):
            pid, query, frame_paths, text_path = self._describe(row, source, member)
            sample = self.loader.load(pid, source, rng, generator, frame_paths, text_path, issues)
            if sample is not None:
                sample["query"] = query
                if self.categories is not None:
                    sample[CATEGORY_KEY] = self._category(pid, source, query, text_path, sample["issues"])
                return sample
            issues.append(("replaced_item", shard_path(self.loader.roots.image_root(source), pid, "jpg")))
            row, member = self._random_member(source, rng)
        raise RuntimeError(f"no readable frames in {MAX_REPLACEMENTS + 1} {SOURCES[source]} items in a row: {issues}")

    def _category(self, pid: int, source: int, query: str, text_path: str | None, issues: list) -> int:
        """The sample's class; an unknown category is reported as an issue (and ignored by the loss)."""
        if source == GOODS:
            path = self.loader.text_file(pid, source, text_path)
            # Read a second time: the loader keeps only the title, and the file is a few hundred bytes.
            label, where = self.categories.goods(goods_category(read_text_lines(path, []))), path
        else:
            label, where = self.categories.video(query), f"query {query!r}"
        if label == IGNORED_LABEL:
            issues.append((UNKNOWN_CATEGORY, where))
        return label

    def _pair(self, row: int, goods_member: int, seed: int) -> dict:
        """The goods sample of a query row, with one of the row's videos under "pair"."""
        rng = np.random.default_rng(seed)
        video_member = int(rng.integers(self.table.member_counts_at(row, PHOTO)))
        video_seed, goods_seed = (int(value) for value in rng.integers(0, 2**62, size=2))
        goods = self[(row, GOODS, goods_member, goods_seed)]
        goods["pair"] = self[(row, PHOTO, video_member, video_seed)]
        return goods

    def training_texts(self, limit: int | None = None) -> Iterator[str]:
        """Queries and item titles (evaluation-style text), for training the WordPiece tokenizer."""
        produced = 0
        for row in range(len(self.table)):
            for text in self._row_texts(row):
                if limit is not None and produced >= limit:
                    return
                produced += 1
                yield text

    def _row_texts(self, row: int) -> Iterator[str]:
        if not self.grouped:
            query, _, text_path = self.table.fields(row)
            yield query
            yield self._title(int(self.table.pids[row]), int(self.table.sources[row]), text_path)
            return
        yield self.table.query(row)
        for source in range(len(SOURCES)):
            for member in range(int(self.table.member_counts_at(row, source))):
                yield self._title(self.table.member(row, source, member), source, None)

    def _title(self, pid: int, source: int, text_path: str | None) -> str:
        path = self.loader.text_file(pid, source, text_path)
        return item_text(path, source, issues=[])

    def _describe(self, row: int, source: int, member: int):
        """(pid, query, explicit frame paths or None, explicit text path or None) of a key."""
        if self.grouped:
            return self.table.member(row, source, member), self.table.query(row), None, None
        query, frame_paths, text_path = self.table.fields(row)
        return int(self.table.pids[row]), query, frame_paths, text_path

    def _random_member(self, source: int, rng: np.random.Generator) -> tuple[int, int]:
        """A uniformly drawn (row, member) holding an item of ``source`` (rejection sampling)."""
        for _ in range(MAX_REJECTIONS):
            row = int(rng.integers(len(self.table)))
            if self.grouped:
                count = self.table.member_counts_at(row, source)
                if count:
                    return row, int(rng.integers(count))
            elif self.table.sources[row] == source:
                return row, 0
        raise RuntimeError(f"{self.table.path}: found no {SOURCES[source]} item to replace an unreadable one")


class EvalDataset(torch.utils.data.Dataset):
    """Items of a test file in file order; deterministic (middle frames, no text augmentation).

    An item with no readable frame keeps its pid and text and gets black frames, reported as
    ``("blank_frames", <its image path>)``: replacing it by another item would give this pid the
    features of a different item."""

    def __init__(self, table: ItemTable, loader: ItemLoader):
        self.table = table
        self.loader = loader
        self.pids = table.pids

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict:
        pid, source = int(self.table.pids[index]), int(self.table.sources[index])
        _, frame_paths, text_path = self.table.fields(index)
        issues = []
        sample = self.loader.load(pid, source, None, None, frame_paths, text_path, issues)
        if sample is None:
            issues.append(("blank_frames", shard_path(self.loader.roots.image_root(source), pid, "jpg")))
            sample = self.loader.load_with_blank_frames(pid, source, text_path, issues)
        return sample


def build_train_dataset(data) -> TrainDataset:
    """Train dataset of ``data.train_file`` (the data config section) in any registered annotation
    format: query-grouped (3 fields, 4 with the English query; the query of ``data.query_language``),
    item file (5 fields), or another registered in ``annotations.ANNOTATION_FORMATS``."""
    categories = train_categories(data)   # first: a missing cluster file is named before any data is read
    table = annotation_format(data.train_file).load(data.train_file, data.query_language)
    loader = ItemLoader(item_roots(data), build_train_transform(data.image_size, data.train_transform),
                        data.clip_length, text_aug=data.text_aug, reduced_decode=data.reduced_decode,
                        jpeg_bytes=data.gpu_decode, train_text=data.train_text)
    return TrainDataset(table, loader, data.cluster_file, item_pairs=data.item_pairs, categories=categories)


def train_categories(data) -> CategoryLabels | None:
    """The category labels of the training samples when a weighted loss term reads them, else None."""
    if not data.category_labels:
        return None
    if not data.category_names:   # the configuration found no cluster file to read them from
        where = data.cluster_file or "data.cluster_file (or DATA_ROOT/train_file/cluster.txt)"
        raise AnnotationError(f"{where}: not found; a weighted loss term reads goods categories, which this query "
                              "cluster file (query \\t category \\t cluster \\t query) lists")
    return CategoryLabels.from_cluster_file(data.cluster_file, data.category_names)


def build_eval_dataset(data, test_file: str) -> EvalDataset:
    """Evaluation dataset of an item file (``pid \\t source \\t query \\t frame_paths \\t text_path``)."""
    annotation = annotation_format(test_file)
    if not annotation.one_item_a_line:
        raise AnnotationError(f"{test_file}: evaluation needs the one-item-a-line format (5 fields)")
    table = annotation.load(test_file, data.query_language)
    check_unique_pids(table)
    transform = build_eval_transform(data.image_size, data.compat)
    loader = ItemLoader(item_roots(data), transform, data.clip_length, text_aug=False, compat=data.compat,
                        reduced_decode=data.reduced_decode, jpeg_bytes=data.gpu_decode)
    return EvalDataset(table, loader)


def check_unique_pids(table: ItemTable) -> None:
    """Refuse a test file listing an item twice: every pid gets exactly one feature (checked before
    embedding, so a large gallery fails in seconds rather than after the whole extraction)."""
    order = np.argsort(table.pids, kind="stable")
    repeated = np.flatnonzero(table.pids[order][1:] == table.pids[order][:-1])
    if len(repeated):
        first, second = sorted(order[repeated[0]:repeated[0] + 2] + 1)
        raise AnnotationError(f"{table.path}: pid {table.pids[order[repeated[0]]]} is listed twice "
                              f"(items {first} and {second}); every item must appear once")

