"""Training data loading throughput: video clips per second through a DataLoader.

Uses ``--data DIR`` (a synthetic-layout folder) or generates one with
``python -m real20m.datasets.synthetic`` in a temp dir. Each clip is ``--clip-length`` frames
decoded, augmented (train transform) and batched; text is read too (tokenisation is excluded).
Prints one JSON line: {"image_size", "clip_length", "clips", "clips_per_s": {workers: rate}}.

    python benchmarks/bench_loader.py --image-size 64
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

# This checkout's package, not whichever real20m is installed: before/after comparisons need it.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from real20m.datasets.annotations import PHOTO  # noqa: E402
from real20m.datasets.collate import stack_frames  # noqa: E402
from real20m.datasets.dataset import build_train_dataset  # noqa: E402
from real20m.config import DataConfig  # noqa: E402
from real20m.datasets.samplers import SampleKey  # noqa: E402


def data_config(data_dir: str, args) -> DataConfig:
    root = os.path.join(data_dir, "Real400K")
    return DataConfig(
        train_file=os.path.join(data_dir, "train_file", "train_items.txt"),
        goods_img_root=os.path.join(root, "goods", "images"), goods_text_root=os.path.join(root, "goods", "text"),
        photo_img_root=os.path.join(root, "video", "images"), photo_text_root=os.path.join(root, "video", "text"),
        frameid_root=None, clip_length=args.clip_length, image_size=args.image_size, text_aug=True,
    )


def video_batches(dataset, clips: int, batch_size: int) -> list[list[SampleKey]]:
    rows = np.flatnonzero(dataset.table.sources == PHOTO)
    rows = np.resize(rows, clips)  # repeat the videos when there are fewer than asked
    keys = [SampleKey(int(row), PHOTO, 0, seed) for seed, row in enumerate(rows)]
    return [keys[i:i + batch_size] for i in range(0, len(keys), batch_size)]


def collate_frames(samples: list[dict]) -> torch.Tensor:
    return stack_frames([sample["frames"] for sample in samples])


def clips_per_second(dataset, batches, workers: int) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                                         collate_fn=collate_frames, persistent_workers=False)
    batches_iter = iter(loader)
    next(batches_iter)  # worker start-up is not loading throughput
    start = time.perf_counter()
    clips = sum(len(batch) for batch in batches_iter)
    return clips / (time.perf_counter() - start)


def run(data_dir: str, args) -> dict:
    dataset = build_train_dataset(data_config(data_dir, args))
    batches = video_batches(dataset, args.clips, args.batch_size)
    rates = {str(workers): round(clips_per_second(dataset, batches, workers), 1) for workers in args.workers}
    return {"image_size": args.image_size, "clip_length": args.clip_length, "clips": args.clips,
            "batch_size": args.batch_size, "clips_per_s": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="synthetic-layout folder; generated in a temp dir when omitted")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--clip-length", type=int, default=5)
    parser.add_argument("--clips", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)  # per-sample work is single-threaded in workers too
    if args.data:
        print(json.dumps(run(args.data, args)))
        return
    if importlib.util.find_spec("real20m.datasets.synthetic") is None:
        print(json.dumps({"skipped": "real20m.datasets.synthetic is not available; pass --data DIR"}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "real20m.datasets.synthetic", "--out", tmp, "--seed", "0"],
                       check=True, stdout=subprocess.DEVNULL)
        print(json.dumps(run(tmp, args)))


if __name__ == "__main__":
    main()
