"""Feature folders as earlier versions wrote them (one shard per rank, ``real20m-features-v1``):
the readers must keep reading them."""
import json
import os

import numpy as np

from real20m.evaluate.feature_folder import FORMAT_NAME, META_FILE, shard_paths


def write_one_shard_folder(folder, shards, dtype="float32"):
    """``shards``: one (ids, feats) pair per rank, written as the one-shard-per-rank layout."""
    os.makedirs(folder, exist_ok=True)
    for rank, (ids, feats) in enumerate(shards):
        ids_path, feats_path = shard_paths(str(folder), rank)
        np.save(feats_path, np.asarray(feats, dtype=dtype))
        np.save(ids_path, np.asarray(ids, dtype=np.int64))
    written = [np.asarray(feats) for _, feats in shards if len(feats)]
    meta = {"format": FORMAT_NAME, "dim": int(written[0].shape[1]), "dtype": dtype,
            "counts": {str(rank): int(len(ids)) for rank, (ids, _) in enumerate(shards)}}
    with open(os.path.join(folder, META_FILE), "w", encoding="utf-8") as handle:
        json.dump(meta, handle)
    return meta
