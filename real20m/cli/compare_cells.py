"""One cell of a comparison (variant x dataset x training seed): train it through the project's
trainer, evaluate every task through the project's extraction, search and metrics, and mark it done.

Folders under OUT: ``data/<family>_seed<N>/`` (each synthetic dataset, generated once) and
``runs/<variant>/<family>_seed<N>/seed<S>/`` (the training run: checkpoints, ``train.log``; its
evaluation under ``eval/<task>/metrics.json``; ``done.json`` once every metric is written).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import yaml

from real20m.cli.compare_grid import DatasetSpec, Grid, GridError, Variant
from real20m.errors import InputError
from real20m.utils.atomic import atomic_open

DONE_MARKER = "done.json"
DATA_MARKER = "synthetic.json"
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class TaskFiles:
    """A retrieval task on the synthetic test split: its queries (an item file, or ``qid \\t text``
    queries when ``text_queries``), its gallery and its ground truth, under ``test_file/``."""
    queries: str
    gallery: str
    ground_truth: str
    text_queries: bool = False


TASKS = {
    "video2goods": TaskFiles("video_queries.txt", "goods_gallery.txt", "eval_gt_video2goods.txt"),
    "goods2video": TaskFiles("goods_gallery.txt", "video_queries.txt", "eval_gt_goods2video.txt"),
    "query2goods": TaskFiles("queries.txt", "goods_gallery.txt", "eval_gt_query2goods.txt", text_queries=True),
    "query2video": TaskFiles("queries.txt", "video_queries.txt", "eval_gt_query2video.txt", text_queries=True),
}


class CellError(InputError, RuntimeError):
    """A cell that could not be trained or evaluated; the message names the cell and its log."""


@dataclass(frozen=True)
class Cell:
    variant: Variant
    dataset: DatasetSpec
    seed: int

    @property
    def name(self) -> str:
        return f"{self.variant.name}/{self.dataset.name}/seed{self.seed}"


@dataclass(frozen=True)
class CellPaths:
    data_root: str
    run_dir: str

    @property
    def checkpoint(self) -> str:
        return os.path.join(self.run_dir, "checkpoints", "last.pth.tar")

    def metrics(self, task: str) -> str:
        return os.path.join(self.run_dir, "eval", task, "metrics.json")


def plan_cells(grid: Grid) -> list[Cell]:
    return [Cell(variant, dataset, seed) for variant in grid.variants for dataset in grid.datasets
            for seed in grid.seeds]


def cell_paths(out: str, cell: Cell) -> CellPaths:
    return CellPaths(data_root=os.path.join(out, "data", cell.dataset.name),
                     run_dir=os.path.join(out, "runs", cell.variant.name, cell.dataset.name, f"seed{cell.seed}"))


# ------------------------------------------------------------------------------ datasets


def ensure_dataset(out: str, dataset: DatasetSpec, sizes: dict[str, int]) -> str:
    """The dataset's folder under ``out/data``, generated once: into a temporary folder renamed
    into place, so an interrupted generation is never taken for a finished one."""
    from real20m.datasets.synthetic import generate
    root = os.path.join(out, "data", dataset.name)
    wanted = {"family": dataset.family, "seed": dataset.seed, "sizes": sizes}
    if os.path.isdir(root):
        _check_same_dataset(root, wanted)
        return root
    temporary = os.path.join(out, "data", f".{dataset.name}.generating")
    shutil.rmtree(temporary, ignore_errors=True)
    print(f"generating the synthetic dataset {dataset} in {root}", flush=True)
    generate(temporary, seed=dataset.seed, style=dataset.family, **sizes)
    with open(os.path.join(temporary, DATA_MARKER), "w", encoding="utf-8") as file:
        json.dump(wanted, file)
    os.replace(temporary, root)
    return root


def _check_same_dataset(root: str, wanted: dict) -> None:
    try:
        with open(os.path.join(root, DATA_MARKER), encoding="utf-8") as file:
            found = json.load(file)
    except FileNotFoundError:
        raise GridError(f"{root}: a folder that this command did not generate; use another --out") from None
    if found != wanted:
        raise GridError(f"{root}: generated as {found}, but the grid asks for {wanted}; use another --out")


# ------------------------------------------------------------------------------ command lines


def option_args(options: tuple[tuple[str, Any], ...]) -> list[str]:
    """``--path VALUE`` for each option, the value spelt as the trainer's command line reads it
    (YAML: true/false, null, flow-style mappings and lists)."""
    argv = []
    for key, value in options:
        argv += [key if key.startswith("-") else f"--{key}", _spelt(value)]
    return argv


def _spelt(value) -> str:
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def model_args(grid: Grid, cell: Cell, paths: CellPaths) -> list[str]:
    """What training and evaluation share: the config, the data and the variant's options."""
    return ["--config", cell.variant.config, "--data_root", paths.data_root,
            *option_args(grid.options), *option_args(cell.variant.options)]


def fresh_train_args(grid: Grid, cell: Cell, paths: CellPaths) -> list[str]:
    steps = ["--max_steps", str(grid.max_steps)] if grid.max_steps else []
    return [*model_args(grid, cell, paths), "--output_dir", paths.run_dir, "--seed", str(cell.seed), *steps]


def train_args(grid: Grid, cell: Cell, paths: CellPaths) -> list[str]:
    # Resuming the newest checkpoint makes a rerun continue a cell whose training was interrupted.
    return [*fresh_train_args(grid, cell, paths), "--resume", "latest"]


def check_options(grid: Grid, cell: Cell, out: str) -> None:
    """Resolve the cell's training configuration now, so that a bad option stops the comparison
    before hours of training rather than at the variant that has it."""
    from real20m.config import read_layers, resolve_layers
    try:
        resolve_layers(read_layers(fresh_train_args(grid, cell, cell_paths(out, cell))))
    except SystemExit:   # argparse has printed which flag or value it refused
        raise GridError(f"variant {cell.variant.name!r}: its options are not valid real20m-train flags (see the "
                        "message above)") from None
    except InputError as error:
        raise GridError(f"variant {cell.variant.name!r}: {error}") from None


# ------------------------------------------------------------------------------ training


def train_in_subprocess(argv: list[str], log_path: str) -> None:
    """The trainer in a fresh interpreter: a crash or a leak stays in its cell."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_PARENT, os.environ.get("PYTHONPATH")]))}
    with open(log_path, "a", encoding="utf-8") as log:
        result = subprocess.run([sys.executable, "-m", "real20m.cli.train", *argv], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
    if result.returncode:
        raise CellError(f"training exited with status {result.returncode}: {_last_line(log_path)} (log: {log_path})")


def train_in_process(argv: list[str], log_path: str) -> None:
    """The trainer in this process: components registered by the caller (a test, a notebook) are seen."""
    from real20m.cli.train import run
    run(argv)


LAUNCHERS: dict[str, Callable[[list[str], str], None]] = {
    "subprocess": train_in_subprocess,
    "in_process": train_in_process,
}


def _last_line(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as file:
        lines = [line.strip() for line in file if line.strip()]
    return lines[-1] if lines else "(no output)"


# ------------------------------------------------------------------------------ evaluation


def evaluate_cell(grid: Grid, cell: Cell, paths: CellPaths) -> None:
    """Every task of the grid on the trained checkpoint, as the ``*_evaluate.sh`` scripts run them;
    each task's printed table goes to ``eval/eval.log``."""
    eval_dir = os.path.join(paths.run_dir, "eval")
    os.makedirs(eval_dir, exist_ok=True)
    with open(os.path.join(eval_dir, "eval.log"), "a", encoding="utf-8") as log, contextlib.redirect_stdout(log):
        try:
            features = _embed_everything(grid, cell, paths, eval_dir)
            for task in grid.tasks:
                _score_task(task, features, paths)
        finally:
            _logging_back_to_console()


def _embed_everything(grid: Grid, cell: Cell, paths: CellPaths, eval_dir: str) -> dict[str, str]:
    """{file name: feature folder} of every file the tasks read, each embedded once."""
    from real20m.cli.train import run
    from real20m.retrieval import embed_query_file
    test_dir = os.path.join(paths.data_root, "test_file")
    features = {}
    for task in grid.tasks:
        files = TASKS[task]
        for name, is_text in ((files.queries, files.text_queries), (files.gallery, False)):
            if name in features:
                continue
            features[name] = os.path.join(eval_dir, "features", name.removesuffix(".txt"))
            if is_text:
                embed_query_file(os.path.join(test_dir, name), paths.checkpoint, features[name], _device(),
                                 config_args=model_args(grid, cell, paths))
            else:
                run([*model_args(grid, cell, paths), "--evaluate", "--resume", paths.checkpoint, "--test_file",
                     os.path.join(test_dir, name), "--output_dir", features[name]])
    return features


def _score_task(task: str, features: dict[str, str], paths: CellPaths) -> None:
    from real20m.evaluate import cli as evaluation
    files = TASKS[task]
    request = evaluation.parse_request([
        "--query_features", features[files.queries], "--gallery_features", features[files.gallery],
        "--gt_file", os.path.join(paths.data_root, "test_file", files.ground_truth),
        "--output_dir", os.path.dirname(paths.metrics(task)), "--task", task, "--quiet"])
    evaluation.run_evaluation(request)


def _device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def _logging_back_to_console() -> None:
    """The project's logger was pointed at the redirected stdout by the evaluation; point it back."""
    from real20m.utils.logging import setup_logging
    setup_logging(None, 0)


# ------------------------------------------------------------------------------ one cell


def run_cell(grid: Grid, cell: Cell, out: str, launcher: str) -> bool:
    """Train and evaluate ``cell`` unless it is done already; True when it ran."""
    if is_done(grid, cell, out):
        print(f"{cell.name}: done already, skipped", flush=True)
        return False
    paths = cell_paths(out, cell)
    argv = train_args(grid, cell, paths)
    os.makedirs(paths.run_dir, exist_ok=True)
    try:
        train_s = _train(cell, argv, os.path.join(paths.run_dir, "train.log"), launcher)
        print(f"{cell.name}: trained in {train_s:.1f} s, evaluating {', '.join(grid.tasks)}", flush=True)
        evaluate_cell(grid, cell, paths)
    except InputError as error:
        raise CellError(f"{cell.name}: {error}") from None
    # Written last and whole: a cell with a marker has every metric of its tasks.
    with atomic_open(os.path.join(paths.run_dir, DONE_MARKER)) as file:
        json.dump({"train_args": argv, "tasks": list(grid.tasks), "train_s": round(train_s, 2)}, file, indent=1)
    return True


def _train(cell: Cell, argv: list[str], log_path: str, launcher: str) -> float:
    """Train the cell; returns the wall seconds (of this attempt, when it continues an interrupted one)."""
    print(f"{cell.name}: training", flush=True)
    started = time.perf_counter()
    LAUNCHERS[launcher](argv, log_path)
    return time.perf_counter() - started


def is_done(grid: Grid, cell: Cell, out: str) -> bool:
    """Whether the cell's marker is there; a marker of other settings is refused, not overwritten."""
    paths = cell_paths(out, cell)
    argv = train_args(grid, cell, paths)
    marker = os.path.join(paths.run_dir, DONE_MARKER)
    if not os.path.exists(marker):
        return False
    done = read_done(paths.run_dir)
    if done["train_args"] != argv:
        raise GridError(f"{paths.run_dir} was trained with {done['train_args']}, not {argv}: use another --out "
                        "(or remove that folder)")
    return set(grid.tasks) <= set(done["tasks"])


def read_done(run_dir: str) -> dict:
    with open(os.path.join(run_dir, DONE_MARKER), encoding="utf-8") as file:
        return json.load(file)


def read_cell_metrics(out: str, cell: Cell, tasks: tuple[str, ...]) -> dict[str, dict]:
    """{task: metrics.json} of a finished cell."""
    paths = cell_paths(out, cell)
    metrics = {}
    for task in tasks:
        with open(paths.metrics(task), encoding="utf-8") as file:
            metrics[task] = json.load(file)
    return metrics
