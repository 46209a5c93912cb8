"""A floor of our own: the simplest credible model, through the project's data, features and metrics.

A 4-layer CNN over each frame (averaged over the clip) plus a bag-of-tokens title embedding make
the item embedding; a bag-of-tokens embedding of the search query is its target; the loss is
symmetric in-batch InfoNCE between items and their queries (query-guided, like QCD, with none of
its towers). Training batches, tokenizer, evaluation items, feature files, search and Recall@K are
the project's own, so the floor differs from the QCD recipe only in the model and its training.

    python benchmarks/baseline_tiny.py --data_root Dataset [--epochs 40] [--seed 0]

The last line printed is JSON: Recall@1/10/100 and chance Recall@10 of video->goods and
goods->video, and the wall and CPU time.
"""
import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from real20m.config import parse_config  # noqa: E402
from real20m.datasets import build_train_dataset  # noqa: E402
from real20m.evaluate import cli as evaluation  # noqa: E402
from real20m.evaluate.encoder import Encoder
from real20m.evaluate.extract import ExtractionSettings, extract_features  # noqa: E402
from real20m.factory import build_collator, build_eval_data, build_tokenizer_for, build_train_data  # noqa: E402
from real20m.utils.distributed import DistEnv  # noqa: E402
from real20m.utils.seeding import seed_everything  # noqa: E402

TASKS = {  # task: (query item file, gallery item file) under test_file/
    "video2goods": ("video_queries.txt", "goods_gallery.txt"),
    "goods2video": ("goods_gallery.txt", "video_queries.txt"),
}
KS = (1, 10, 100)
CPU_PROCESS = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True, backend=None)


class Encoded:
    """What ``extract_features`` reads from a model's ``encode_items``."""

    def __init__(self, fused):
        self.fused = fused


class BaselineModel(nn.Module):
    def __init__(self, vocab_size, dim=128, max_text_tokens=512):
        super().__init__()
        widths = (3, 32, 64, 128, 128)
        layers = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.cnn = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], dim))
        self.words = nn.EmbeddingBag(vocab_size, dim, mode="sum")
        self.logit_scale = nn.Parameter(torch.tensor(3.0))
        self.max_text_tokens = max_text_tokens

    def bag(self, ids, mask):
        """Mean of the token embeddings under the mask."""
        weights = mask.float() / mask.sum(dim=1, keepdim=True).clamp(min=1)
        return self.words(ids, per_sample_weights=weights)

    def encode_query(self, ids, mask):
        return self.bag(ids, mask)

    def encode_items(self, title_ids, title_mask, pixels):
        batch, frames = pixels.shape[:2]
        images = pixels.flatten(0, 1).float().div(255).sub(0.5).div(0.25)
        visual = self.cnn(images).view(batch, frames, -1).mean(dim=1)
        return Encoded(visual + self.bag(title_ids, title_mask))


def info_nce(items, queries, logit_scale):
    logits = logit_scale.exp().clamp(max=100) * F.normalize(items, dim=-1) @ F.normalize(queries, dim=-1).T
    targets = torch.arange(len(items))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def train(model, loader, sampler, epochs, lr):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    # Linear warm-up over 5% of the steps, then cosine decay (epochs vary by a batch or two in length).
    total = max(1, epochs * len(sampler))
    warmup = max(1, total // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(step, total) / total)))
    model.train()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in loader:
            items = model.encode_items(batch["title_ids"], batch["title_mask"], batch["pixels"]).fused
            loss = info_nce(items, model.encode_query(batch["query_ids"], batch["query_mask"]), model.logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return float(loss)


def evaluate(model, cfg, collate, out_dir):
    """{task: metrics.json dict} through the project's extraction and evaluation."""
    dist = CPU_PROCESS
    test_dir = os.path.join(cfg.data.data_root, "test_file")
    features = {}
    with torch.no_grad():
        for name in {name for files in TASKS.values() for name in files}:
            features[name] = os.path.join(out_dir, "features", name.removesuffix(".txt"))
            extract_features(Encoder(model, dist.device), build_eval_data(cfg.data, os.path.join(test_dir, name)),
                             collate, dist, features[name], ExtractionSettings(batch_size=64, workers=cfg.data.workers))
    results = {}
    for task, (queries, gallery) in TASKS.items():
        request = evaluation.parse_request([
            "--query_features", features[queries], "--gallery_features", features[gallery],
            "--gt_file", os.path.join(test_dir, f"eval_gt_{task}.txt"), "--output_dir", os.path.join(out_dir, task),
            "--task", task, "--quiet"])
        results[task] = evaluation.run_evaluation(request)
    return results


def summary(metrics):
    row = {f"R@{k}": round(metrics[f"recall@{k}"], 4) for k in KS if f"recall@{k}" in metrics}
    row["chance_R@10"] = round(metrics["chance_recall@10"], 4)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default=None, help="where features and metrics go (default: a temporary folder)")
    args = parser.parse_args(argv)
    started, cpu_started = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    out_dir = args.output_dir or tempfile.mkdtemp(prefix="baseline_tiny_")
    cfg = parse_config(["--config", "tiny", "--data_root", args.data_root, "--output_dir", out_dir,
                        "--seed", str(args.seed)])
    seed_everything(args.seed)
    dist = CPU_PROCESS
    dataset = build_train_dataset(cfg.data)
    tokenizer = build_tokenizer_for(cfg.data, cfg.model, out_dir, dataset.training_texts, True)
    collate = build_collator(cfg.data, tokenizer)
    _, sampler, loader = build_train_data(cfg.data, collate, dist, args.seed, dataset)
    model = BaselineModel(len(tokenizer))
    untrained = {task: summary(m) for task, m in evaluate(model, cfg, collate, os.path.join(out_dir, "init")).items()}
    final_loss = train(model, loader, sampler, args.epochs, args.lr)
    trained = {task: summary(m) for task, m in evaluate(model, cfg, collate, os.path.join(out_dir, "trained")).items()}
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"model": "baseline_tiny", "data_root": args.data_root, "seed": args.seed, "epochs": args.epochs,
                      "final_loss": round(final_loss, 4), "untrained": untrained, "trained": trained,
                      "wall_s": round(time.perf_counter() - started, 1),
                      "cpu_s": round(cpu.ru_utime + cpu.ru_stime - cpu_started.ru_utime - cpu_started.ru_stime
                                     + children.ru_utime + children.ru_stime, 1)}))


if __name__ == "__main__":
    main()
