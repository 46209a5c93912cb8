"""Item features on disk: one call reads either format, and the public names of both live here.

* The native format, a folder of binary ``.npy`` files per writer rank described by ``meta.json``
  (``feature_folder``), which feature extraction writes in bounded partitions with a progress
  file per rank (``feature_partitions``). Read memory-mapped, a chunk at a time (``feature_set``).
* The legacy text format, ``pid \\t f1,...,fD`` one item a line, as the original release wrote and
  read them (``legacy_text``).
"""
import os

from real20m.evaluate.feature_folder import load_shard_folder, read_json, write_json_atomic
from real20m.evaluate.feature_partitions import write_feature_folder
from real20m.evaluate.feature_set import (FeatureFileError, FeatureSet, ShardedArray, read_rows, read_sample,
                                          release_mapped_pages)
from real20m.evaluate.legacy_text import read_legacy_features, write_legacy_features

__all__ = ["FeatureFileError", "FeatureSet", "ShardedArray", "load_features", "read_json", "read_legacy_features",
           "read_rows", "read_sample", "release_mapped_pages", "write_feature_folder", "write_json_atomic",
           "write_legacy_features"]


def load_features(path):
    """A shard folder (memory-mapped) or a legacy text file -> FeatureSet."""
    if os.path.isdir(path):
        return load_shard_folder(path)
    if not os.path.isfile(path):
        raise FeatureFileError(f"{path}: no such feature file or folder")
    return read_legacy_features(path)
