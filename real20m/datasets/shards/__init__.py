"""Prepared shards: a Real400K / Real20M dataset written once as WebDataset tar shards.

The loader decodes every full-size JPEG every epoch; shards hold each item once, its frames
already resized, many items per tar file (the conventions of webdataset, img2dataset and
open_clip). This package writes them (``real20m-make-shards``); training and evaluation do not
read them yet.

The output folder::

    goods-000000.tar  goods-000001.tar ...   one shard set per source, items sorted by pid,
    video-000000.tar  ...                    ``items_per_shard`` planned items per shard
    goods-index.jsonl  video-index.jsonl     random access: one JSON object a line (below)
    manifest.json                            settings, every shard's samples, bytes and sha256
    skipped.tsv                              source, pid, path, reason of every problem met

A sample (members ``<pid>.<name>``, the pid is the ``__key__``):

* ``jpg``: a goods item's image, or a video's cover ``<pid>.jpg``;
* ``0.jpg``, ``1.jpg``, ...: every listed frame of a video that could be read, in the order the
  loader lists them (``items.video_frame_paths``: the item file's paths, else the frame list,
  else ``<pid>_<k>.jpg``, else the cover), so its frame-selection rules apply to stored frames;
* ``json``: ``{"pid", "source" ("goods" or "video"), "text" (the text file's lines), "text_file",
  "image" (the ``jpg`` member's file or null), "frames" (the stored frames' files, member k is
  frames[k]), "listed_frames" (every listed file, readable or not), "original_sizes" and "sizes"
  (member name -> [width, height] before and after resizing)}``. File paths are relative to the
  data root.

Images are resized so the short side is ``shard_image_size`` (never upscaled: a smaller image
keeps its file's bytes) and re-encoded as JPEG at ``jpeg_quality``; size 0 stores every file's
bytes untouched (only a file that is not a JPEG is re-encoded, as the loader's byte mode does).

The index ``<source>-index.jsonl``: one line per stored item, in shard order,
``{"pid": 1000012, "shard": "video-000000.tar", "members": {"0.jpg": [offset, size], ...}}``:
the member's data starts ``offset`` bytes into the shard and is ``size`` bytes long.

Each shard is written under a hidden temporary name and renamed when complete. A rerun keeps a
shard whose file hashes to the sha256 recorded for the same plan (settings and items), in
``manifest.json`` or, after an interrupted run, in ``manifest.partial.jsonl``; every other
shard is written again. ``verify_shards`` re-hashes every shard against the manifest.
"""
from real20m.datasets.shards.build import ShardSettings, make_shards
from real20m.datasets.shards.manifest import ShardVerifyError, verify_shards
from real20m.datasets.shards.plan import DataRootError

__all__ = ["DataRootError", "ShardSettings", "ShardVerifyError", "make_shards", "verify_shards"]
