"""Does the default recipe learn on data it was not tuned on? Untrained vs the floor vs the recipe.

For every dataset family and generator seed (``--datasets STYLE:SEED ...``): generate the synthetic
dataset, then score on its test split, through the project's extraction, search and metrics:

  untrained   the QCD model of configs/tiny.yaml, untrained (``--resume init``)
  floor       benchmarks/baseline_tiny.py (a 4-layer CNN + bag of tokens, query-guided InfoNCE)
  recipe      ``sh train.sh`` exactly as a user runs it (configs/tiny.yaml), then its last checkpoint

    python benchmarks/learning_quality.py --out /tmp/lq      # products and household, seeds 2-4

The default seeds are those the recipe was not tuned on (it was chosen on products seeds 0, 1 and 5
and household seeds 1 and 5).

Prints a Markdown table (mean +- std over the seeds of Recall@1/10/100 of video->goods and
goods->video, chance Recall@10, training wall and CPU minutes) and, last, one JSON line with
every run, and whether the recipe is above the floor and 3x untrained on every dataset
(``holds_on_every_dataset``). Extra arguments after ``--`` go to train.sh (e.g. ``-- --epochs 100``).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

import baseline_tiny
from baseline_tiny import KS, TASKS, evaluate

from real20m.config import read_layers, resolve_layers
from real20m.datasets.synthetic import generate
from real20m.factory import build_collator
from real20m.model_source import inspect_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


DEFAULT_DATASETS = [("products", 2), ("products", 3), ("products", 4),
                    ("household", 2), ("household", 3), ("household", 4)]


def style_and_seed(text):
    style, _, seed = text.partition(":")
    return style, int(seed)


def children_cpu_s():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def score_qcd(data_root, checkpoint, out_dir):
    """{task: row} of a QCD checkpoint (or "init": the untrained model) on the test split."""
    source = inspect_source(checkpoint)
    layers = read_layers(["--config", "tiny", "--data_root", data_root, "--output_dir", out_dir, "--resume",
                          checkpoint, "--evaluate", "--workers", "2"])
    cfg = resolve_layers(layers, source.trained_settings())
    model, tokenizer = source.load(cfg)
    results = evaluate(model, cfg, build_collator(cfg.data, tokenizer), out_dir)
    return {task: baseline_tiny.summary(metrics) for task, metrics in results.items()}


def train_recipe(data_root, out_dir, extra):
    """``sh train.sh`` as a user runs it; returns (wall s, CPU s) of the training."""
    env = {**os.environ, "DATA_ROOT": data_root, "OUTPUT_DIR": out_dir}
    started, cpu = time.perf_counter(), children_cpu_s()
    with open(out_dir + ".train.log", "w") as log:
        subprocess.run(["sh", os.path.join(REPO, "train.sh"), *extra], env=env, check=True, stdout=log,
                       stderr=subprocess.STDOUT)
    return time.perf_counter() - started, children_cpu_s() - cpu


def run_floor(data_root, out_dir, seed, epochs):
    command = [sys.executable, os.path.join(REPO, "benchmarks", "baseline_tiny.py"), "--data_root", data_root,
               "--output_dir", out_dir, "--seed", str(seed), "--epochs", str(epochs)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def one_dataset(args, style, seed):
    name = f"{style}_seed{seed}"
    data_root = os.path.join(args.out, "data", name)
    if not os.path.exists(data_root):
        generate(data_root, seed=seed, style=style)
    runs = os.path.join(args.out, "runs", name)
    os.makedirs(runs, exist_ok=True)
    row = {"style": style, "seed": seed, "untrained": score_qcd(data_root, "init", os.path.join(runs, "untrained"))}
    floor = run_floor(data_root, os.path.join(runs, "floor"), seed, args.floor_epochs)
    row["floor"] = floor["trained"]
    row["floor_wall_s"], row["floor_cpu_s"] = floor["wall_s"], floor["cpu_s"]
    recipe_dir = os.path.join(runs, "recipe")
    row["recipe_wall_s"], row["recipe_cpu_s"] = train_recipe(data_root, recipe_dir, args.train_args)
    row["recipe"] = score_qcd(data_root, os.path.join(recipe_dir, "checkpoints", "last.pth.tar"),
                              os.path.join(runs, "recipe_eval"))
    print(json.dumps(row), flush=True)
    return row


def mean_std(values):
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def table(rows):
    header = ["family", "model"] + [f"{task} R@{k}" for task in TASKS for k in KS] + [
        "chance R@10", "train wall min", "train CPU min"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for style in dict.fromkeys(row["style"] for row in rows):
        group = [row for row in rows if row["style"] == style]
        for model in ("untrained", "floor", "recipe"):
            cells = [f"{style} (seeds {', '.join(str(row['seed']) for row in group)})", model]
            cells += [mean_std([row[model][task][f"R@{k}"] for row in group]) for task in TASKS for k in KS]
            cells.append(f"{np.mean([row['untrained']['video2goods']['chance_R@10'] for row in group]):.3f}")
            for clock in ("wall", "cpu"):
                key = f"{model}_{clock}_s" if model != "untrained" else None
                cells.append(f"{np.mean([row[key] for row in group]) / 60:.1f}" if key else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def issue_14_holds(row) -> bool:
    """The recipe above the floor at every reported Recall@K of both tasks, and at least 3x the
    untrained model at Recall@1 and @10 (at @100 an untrained model is already past 1/3)."""
    return all(row["recipe"][task][f"R@{k}"] > row["floor"][task][f"R@{k}"] for task in TASKS for k in KS) and \
        all(row["recipe"][task][f"R@{k}"] >= 3 * row["untrained"][task][f"R@{k}"] for task in TASKS for k in (1, 10))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the datasets and runs")
    parser.add_argument("--datasets", nargs="+", type=style_and_seed, default=DEFAULT_DATASETS,
                        help="STYLE:SEED of each synthetic dataset")
    parser.add_argument("--floor_epochs", type=int, default=30)
    args = parser.parse_args(argv)
    args.train_args = extra
    rows = [one_dataset(args, style, seed) for style, seed in args.datasets]
    print(table(rows))
    failing = [f"{row['style']}:{row['seed']}" for row in rows if not issue_14_holds(row)]
    print("recipe above the floor and 3x untrained on every dataset" if not failing else
          f"recipe NOT above the floor and 3x untrained on: {' '.join(failing)}")
    print(json.dumps({"benchmark": "learning_quality", "train_args": extra, "holds_on_every_dataset": not failing,
                      "rows": rows}))


if __name__ == "__main__":
    main()
