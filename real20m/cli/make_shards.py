"""``real20m-make-shards``: write a Real400K / Real20M dataset once as WebDataset tar shards.

Every goods item and video that the train, validation and test annotation files reference goes
into one sample: its image (a video: cover and every listed frame) resized so the short side is
--shard_image_size, its text-file lines and a JSON description. The output folder gets one shard
set per source (goods-000000.tar, video-000000.tar, ...), an index per source for random access,
manifest.json and skipped.tsv (see real20m/datasets/shards/__init__.py for the formats).

A rerun keeps the shards that are complete and writes the others (a torn or missing one, or all
of them after a change of settings); --verify re-hashes every shard against the manifest. Bad
items never stop the conversion: they are listed in skipped.tsv and counted at the end.

    real20m-make-shards --data_root Dataset --out Dataset/shards --workers 8
    real20m-make-shards --out Dataset/shards --verify
    python tools/make_shards.py ...   (the same, from a checkout)
"""
import argparse
import os
import sys

from tqdm import tqdm

from real20m.datasets.shards import ShardSettings, make_shards, verify_shards
from real20m.datasets.shards.manifest import SKIPPED
from real20m.utils.entry import add_version_argument, exit_on_input_error


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Write a Real400K-layout dataset as WebDataset tar shards.")
    parser.add_argument("--data_root", help="a Dataset/ folder in the Real400K layout (required unless --verify)")
    parser.add_argument("--out", required=True, help="output folder for the shards, index, manifest and skipped.tsv")
    parser.add_argument("--shard_image_size", type=int, default=256,
                        help="short side of the stored images in pixels; smaller images are never upscaled "
                             "(0: store every file's bytes untouched)")
    parser.add_argument("--jpeg_quality", type=int, default=90, help="JPEG quality of resized images (1-95)")
    parser.add_argument("--items_per_shard", type=int, default=1000, help="items planned per shard")
    parser.add_argument("--workers", type=int, default=1, help="processes, each writing whole shards")
    parser.add_argument("--dataset_name", default="Real400K", help="Real400K or Real20M (folder under --data_root)")
    parser.add_argument("--frameid_root", help="optional frame lists <root>/<pid %% 50000>/<pid>.txt, as in training")
    parser.add_argument("--verify", action="store_true",
                        help="only re-hash every shard in --out against manifest.json; the first bad shard is "
                             "named and the exit status is 2")
    add_version_argument(parser)
    args = parser.parse_args(argv)
    if not args.verify and args.data_root is None:
        parser.error("--data_root is required (unless --verify)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return exit_on_input_error(lambda: verify(args.out) if args.verify else convert(args))


def verify(out: str) -> int:
    print(f"{verify_shards(out)} shards in {out} match the manifest")
    return 0


def convert(args: argparse.Namespace) -> int:
    settings = ShardSettings(args.data_root, args.out, args.shard_image_size, args.jpeg_quality, args.items_per_shard,
                             args.workers, args.dataset_name, args.frameid_root)
    with tqdm(desc="make shards", unit="item", disable=None) as bar:  # disable=None: quiet when not a terminal
        def planned(plans):
            bar.total = sum(len(shard.items) for shard in plans)
            bar.refresh()

        summary = make_shards(settings, on_shard=lambda result: bar.update(result.record["items"]), on_plan=planned)
    sources = summary.manifest["sources"]
    print(f"{sources['goods']['samples']} goods and {sources['video']['samples']} videos in {args.out}: "
          f"{summary.written} shards written, {summary.kept} kept; "
          f"{summary.skipped} problems listed in {os.path.join(args.out, SKIPPED)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
