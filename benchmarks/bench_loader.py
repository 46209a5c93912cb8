"""Training data loading throughput: video clips per second through a DataLoader.

Uses ``--data DIR`` (a synthetic-layout folder) or generates one with
``python -m real20m.datasets.synthetic`` in a temp dir. Each clip is ``--clip-length`` frames
decoded, augmented (train transform) and batched; text is read too (tokenisation is excluded).
Prints one JSON line: {"image_size", "clip_length", "clips", "clips_per_s": {workers: rate}}.

    python benchmarks/bench_loader.py --image-size 64

At real frame sizes (``--frame_size``): photo-like JPEGs (smooth shapes, gradients, hard edges and
sensor noise, quality 90) of ``--frame_size`` video frames and ``--goods_size`` goods photos are
written to a temporary folder (removed afterwards), and in one run, each figure the median of
``--repeats`` interleaved repetitions of ``--clips`` clips:

* ``clips_per_s``: {"train": {workers: rate}, "eval": {workers: rate}}, the loader as configured
  (reduced-scale JPEG decoding on), training and evaluation transforms;
* ``full_decode_clips_per_s``: the full-size decoding path (``reduced_decode=False``), training,
  2 workers; ``full_decode_eval_clips_per_s`` the same for evaluation;
* ``floor_clips_per_s``: the same frames decoded at the loader's reduced scale with nothing else,
  in 2 processes; ``decode_resize_floor_clips_per_s``: the same, each frame then cropped, resized
  and flipped by the training transform (its ``reduced``), and nothing else: the least work a
  training clip can cost, so ``decode_resize_floor_over_train_2`` is the loader's own overhead.

    python benchmarks/bench_loader.py --frame_size 720x1280 --goods_size 800x800 --image_size 224
"""
import argparse
import dataclasses
import importlib.util
import json
import multiprocessing
import os
import statistics
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
from real20m.datasets.dataset import build_eval_dataset, build_train_dataset  # noqa: E402
from real20m.datasets.items import decode_frame, segment_frame_indices  # noqa: E402
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


# --------------------------------------------------------------------------- real frame sizes


def parse_size(text: str) -> tuple[int, int]:
    """'720x1280' -> (width 720, height 1280)."""
    width, height = (int(part) for part in text.lower().split("x"))
    return width, height


def photo_like(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """An (H, W, 3) uint8 image whose JPEG costs what a photo's does: smooth colour fields,
    a gradient, hard-edged shapes and sensor noise."""
    from PIL import Image
    coarse = rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    field += (40 * np.sin(xs / rng.uniform(15, 60)) * np.cos(ys / rng.uniform(15, 60)))[..., None]
    field += (xs / width * 60 - 30)[..., None]
    for _ in range(12):  # rectangles and discs with hard edges
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(20, width / 4)
        mask = (np.abs(xs - cx) < r) & (np.abs(ys - cy) < r * 0.7) if rng.random() < 0.5 else \
            (xs - cx) ** 2 + (ys - cy) ** 2 < r * r
        field[mask] = field[mask] * 0.3 + rng.uniform(0, 255, 3) * 0.7
    field += rng.normal(0, 6, field.shape).astype(np.float32)
    return np.clip(field, 0, 255).astype(np.uint8)


def write_photo_dataset(out: str, args) -> dict:
    """A Real400K-layout folder of photo-like JPEGs; returns the paths the measurements need."""
    from PIL import Image
    rng = np.random.default_rng(0)
    root = os.path.join(out, "Real400K")
    frame_size, goods_size = parse_size(args.frame_size), parse_size(args.goods_size)
    items, video_items, video_frames = [], [], {}
    for source, count, size, first in (("goods", args.goods_items, goods_size, 50000),
                                       ("photo", args.videos, frame_size, 1000000)):
        kind = "goods" if source == "goods" else "video"
        for pid in range(first, first + count):
            shard = str(pid % 50000)
            os.makedirs(os.path.join(root, kind, "images", shard), exist_ok=True)
            os.makedirs(os.path.join(root, kind, "text", shard), exist_ok=True)
            names = [f"{shard}/{pid}.jpg"] if source == "goods" else \
                [f"{shard}/{pid}_{k}.jpg" for k in range(args.frames_per_video)]
            for name in names:
                Image.fromarray(photo_like(*size, rng)).save(os.path.join(root, kind, "images", name), quality=90)
            lines = ["1", "cat", "brand", "entity", f"goods title {pid}", "desc"] if source == "goods" else \
                [f"caption {pid}", f"video title {pid}", f"video text {pid}"]
            with open(os.path.join(root, kind, "text", shard, f"{pid}.txt"), "w", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n")
            line = f"{pid}\t{source}\tquery {pid % 7}\t{','.join(names)}\t{shard}/{pid}.txt"
            items.append(line)
            if source == "photo":
                video_items.append(line)
                video_frames[pid] = [os.path.join(root, kind, "images", name) for name in names]
    os.makedirs(os.path.join(out, "train_file"), exist_ok=True)
    os.makedirs(os.path.join(out, "test_file"), exist_ok=True)
    with open(os.path.join(out, "train_file", "train_items.txt"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(items) + "\n")
    eval_file = os.path.join(out, "test_file", "video_items.txt")
    with open(eval_file, "w", encoding="utf-8") as handle:
        handle.write("\n".join(video_items) + "\n")
    return {"eval_file": eval_file, "video_frames": video_frames}


def timed_loader(dataset, batches, workers: int) -> float:
    """clips/s of a DataLoader over ``batches`` (the first batch, worker start-up, not counted)."""
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                                         collate_fn=collate_frames, persistent_workers=False)
    batches_iter = iter(loader)
    next(batches_iter)
    start = time.perf_counter()
    clips = sum(len(batch) for batch in batches_iter)
    return clips / (time.perf_counter() - start)


_FLOOR_JOB = {}


def _decode_clips(clip_paths: list[list[str]]) -> int:
    transform = _FLOOR_JOB["transform"]
    generator = torch.Generator().manual_seed(0)
    for paths in clip_paths:
        for path in paths:
            frame = decode_frame(path, transform.decode_scale)
            if _FLOOR_JOB["resize"]:
                transform.reduced(frame.image, frame.original_size, frame.scale, generator)
    return len(clip_paths)


def floor_clips_per_s(clip_paths: list[list[str]], transform, resize: bool, processes: int = 2) -> float:
    """clips/s of decoding the clips' frames at the loader's reduced scale (``resize``: and then
    the training transform's crop, resize and flip of each) and nothing else."""
    _FLOOR_JOB.update(transform=transform, resize=resize)  # inherited by the forked processes
    chunks = [clip_paths[i::processes * 4] for i in range(processes * 4)]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.map(_decode_clips, [clip_paths[:1]] * processes)  # start-up is not decoding
        start = time.perf_counter()
        clips = sum(pool.map(_decode_clips, chunks, chunksize=1))
        return clips / (time.perf_counter() - start)


def run_frame_sizes(data_dir: str, paths: dict, args) -> dict:
    config = dataclasses.replace(data_config(data_dir, args), test_file=paths["eval_file"], compat="default")
    train = build_train_dataset(config)
    train_full = build_train_dataset(config)
    train_full.loader = dataclasses.replace(train.loader, reduced_decode=False)
    evaluation = build_eval_dataset(config, paths["eval_file"])
    eval_full = build_eval_dataset(config, paths["eval_file"])
    eval_full.loader = dataclasses.replace(evaluation.loader, reduced_decode=False)
    train_batches = video_batches(train, args.clips, args.batch_size)
    eval_rows = np.resize(np.arange(len(evaluation)), args.clips)
    eval_batches = [eval_rows[i:i + args.batch_size].tolist() for i in range(0, args.clips, args.batch_size)]
    # floor: each clip's frames (the segment middles), the clips cycling over the videos as the loader's do
    pids = list(paths["video_frames"])
    clip_paths = []
    for index in range(args.clips):
        frames = paths["video_frames"][pids[index % len(pids)]]
        clip_paths.append([frames[i] for i in segment_frame_indices(len(frames), args.clip_length)])
    frame_size = parse_size(args.frame_size)
    measures = {f"train_{w}": (train, train_batches, w) for w in args.workers}
    measures.update({f"eval_{w}": (evaluation, eval_batches, w) for w in args.workers})
    measures["full_train_2"] = (train_full, train_batches, 2)
    measures["full_eval_2"] = (eval_full, eval_batches, 2)
    samples = {name: [] for name in list(measures) + ["floor", "decode_resize_floor"]}
    for repeat in range(args.repeats):  # interleaved, so that a noisy spell hits every figure alike
        for name, (dataset, batches, workers) in measures.items():
            samples[name].append(timed_loader(dataset, batches, workers))
        samples["floor"].append(floor_clips_per_s(clip_paths, train.loader.transform, resize=False))
        samples["decode_resize_floor"].append(floor_clips_per_s(clip_paths, train.loader.transform, resize=True))
        print(json.dumps({"repeat": repeat, **{k: round(v[-1], 1) for k, v in samples.items()}}), file=sys.stderr)
    median = {name: round(statistics.median(values), 1) for name, values in samples.items()}
    result = {
        "clips_per_s": {"train": {str(w): median[f"train_{w}"] for w in args.workers},
                        "eval": {str(w): median[f"eval_{w}"] for w in args.workers}},
        "full_decode_clips_per_s": median["full_train_2"],
        "full_decode_eval_clips_per_s": median["full_eval_2"],
        "floor_clips_per_s": median["floor"],
        "decode_resize_floor_clips_per_s": median["decode_resize_floor"],
    }
    result["speedup_vs_full_decode"] = round(result["clips_per_s"]["train"].get("2", float("nan"))
                                             / result["full_decode_clips_per_s"], 3)
    for floor in ("floor", "decode_resize_floor"):
        result[f"{floor}_over_train_2"] = round(result[f"{floor}_clips_per_s"]
                                                / result["clips_per_s"]["train"].get("2", float("nan")), 3)
    result.update({"frame_size": args.frame_size, "goods_size": args.goods_size, "image_size": args.image_size,
                   "clip_length": args.clip_length, "clips": args.clips, "batch_size": args.batch_size,
                   "repeats": args.repeats, "reduced_scale": train.loader.transform.decode_scale(*frame_size),
                   "eval_reduced_scale": evaluation.loader.transform.decode_scale(*frame_size),
                   "samples": {name: [round(v, 1) for v in values] for name, values in samples.items()}})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="synthetic-layout folder; generated in a temp dir when omitted")
    parser.add_argument("--image-size", "--image_size", dest="image_size", type=int, default=None,
                        help="output size (default 64; 224 with --frame_size)")
    parser.add_argument("--clip-length", "--clip_length", dest="clip_length", type=int, default=5)
    parser.add_argument("--clips", type=int, default=None, help="clips per measurement (default 2048; 480 "
                        "with --frame_size)")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--frame_size", "--frame-size", dest="frame_size",
                        help="WxH of photo-like video frames: measure at real frame sizes")
    parser.add_argument("--goods_size", "--goods-size", dest="goods_size", default="800x800")
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--frames_per_video", "--frames-per-video", dest="frames_per_video", type=int, default=8)
    parser.add_argument("--goods_items", "--goods-items", dest="goods_items", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # per-sample work is single-threaded in workers too
    if args.frame_size:
        args.image_size = args.image_size or 224
        args.clips = args.clips or 480
        with tempfile.TemporaryDirectory() as tmp:
            paths = write_photo_dataset(tmp, args)
            print(json.dumps(run_frame_sizes(tmp, paths, args)))
        return
    args.image_size = args.image_size or 64
    args.clips = args.clips or 2048
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
