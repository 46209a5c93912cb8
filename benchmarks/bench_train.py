"""Training throughput: the real loader versus the same batches already in memory.

    python benchmarks/bench_train.py [--data DIR] [--config configs/tiny.yaml] [--steps 30] [--workers 2]

The ratio (step time with the loader / step time from memory) says how much the data pipeline
slows training down; 1.0 means the loader keeps up. Prints one JSON object as its last line.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from real20m.config import parse_config  # noqa: E402
from real20m.engine.distributed import init_distributed  # noqa: E402
from real20m.engine.trainer import Trainer  # noqa: E402


def timed_steps(trainer: Trainer, batches) -> float:
    """Seconds per step over ``batches`` (an iterator), after one warm-up step."""
    iterator = iter(batches)
    trainer.train_step(next(iterator))
    count, start = 0, time.perf_counter()
    for batch in iterator:
        trainer.train_step(batch)
        count += 1
    return (time.perf_counter() - start) / max(count, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=None, help="dataset root (default: a fresh synthetic one)")
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "tiny.yaml"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or os.path.join(tmp, "Dataset")
        if args.data is None:
            subprocess.run([sys.executable, "-m", "real20m.datasets.synthetic", "--out", data, "--seed", "0"],
                           check=True, stdout=subprocess.DEVNULL)
        # The one-item-a-line file: every item is a sample, so one epoch holds enough steps to time.
        items = os.path.join(data, "train_file", "train_items.txt")
        cfg = parse_config(["--config", args.config, "--data_root", data, "--train_file", items,
                            "--output_dir", os.path.join(tmp, "out"),
                            "--workers", str(args.workers), "--print_freq", "1000000"])
        trainer = Trainer(cfg, init_distributed())
        steps = min(args.steps, len(trainer.sampler))
        trainer.sampler.set_epoch(0)

        loader_batches = []
        def recording(iterable):
            for index, batch in enumerate(iterable):
                if index > steps:
                    return
                loader_batches.append(batch)
                yield batch
        with_loader = timed_steps(trainer, recording(trainer.loader))
        in_memory = timed_steps(trainer, loader_batches)

    samples = cfg.data.batch_size
    print(json.dumps({
        "config": os.path.basename(args.config), "workers": args.workers, "steps": steps,
        "batch_size": samples, "torch_threads": torch.get_num_threads(),
        "loader_step_s": round(with_loader, 4), "memory_step_s": round(in_memory, 4),
        "loader_samples_per_s": round(samples / with_loader, 1),
        "memory_samples_per_s": round(samples / in_memory, 1),
        "ratio": round(with_loader / in_memory, 3),
    }))


if __name__ == "__main__":
    main()
