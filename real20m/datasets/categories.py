"""Goods-category labels of training samples, for the loss terms that read them (``category``).

The vocabulary is the sorted set of the category column of ``train_file/cluster.txt``
(``query \\t category \\t finer cluster \\t query``); a class is a name's position in it. A goods
item's category is its text file's second line; a video has none of its own and takes that of its
query in the cluster file. A category outside the vocabulary (or a query the file does not list)
is unknown: the sample gets ``IGNORED_LABEL``, which the loss skips, and an ``unknown_category``
data issue, which the training log counts once an epoch.

This module imports no torch, so that the configuration can read the vocabulary before anything
heavy is imported.
"""
from __future__ import annotations

from dataclasses import dataclass

from .annotations import AnnotationError, load_clusters

# The batch entry (and model output) holding the labels, (B,) int64.
CATEGORY_KEY = "category"
IGNORED_LABEL = -100   # F.cross_entropy's default ignore_index
UNKNOWN_CATEGORY = "unknown_category"   # the data issue of an unlabelled sample


def read_category_names(cluster_file: str) -> tuple[str, ...]:
    """The vocabulary: the sorted distinct names of the cluster file's category column."""
    table = load_clusters(cluster_file)
    if not table.queries:
        raise AnnotationError(f"{cluster_file}: lists no query, so no category to label training samples with")
    return tuple(sorted(set(table.names[0])))


@dataclass(frozen=True)
class CategoryLabels:
    """Class of a category name, and of each clustered query's category."""

    classes: dict[str, int]
    query_classes: dict[str, int]

    @classmethod
    def from_cluster_file(cls, cluster_file: str, names: tuple[str, ...]) -> CategoryLabels:
        """Labels in the vocabulary ``names`` (read with the configuration), queries from ``cluster_file``."""
        table = load_clusters(cluster_file)
        classes = {name: index for index, name in enumerate(names)}
        categories = table.names[0]
        query_classes = {query: classes[categories[code]] for query, code in zip(table.queries, table.labels[:, 0])
                         if categories[code] in classes}
        return cls(classes, query_classes)

    def goods(self, category: str) -> int:
        return self.classes.get(category, IGNORED_LABEL)

    def video(self, query: str) -> int:
        return self.query_classes.get(query, IGNORED_LABEL)
