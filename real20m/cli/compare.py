"""``real20m-compare``: train and score several methods side by side on synthetic datasets, with
the spread over training seeds and 95% intervals.

    real20m-compare benchmarks/grids/comparison.yaml --out /tmp/comparison
    real20m-compare GRID.yaml --datasets products:0 --seeds 0 --max_steps 5 --out DIR   # a smoke run
    python benchmarks/compare.py GRID.yaml ...                                           # from a checkout

The grid (see real20m/cli/compare_grid.py) names the variants (a config plus options), the
datasets (synthetic FAMILY:SEED) and the training seeds. Every cell (variant x dataset x seed) is
trained by the project's trainer and evaluated on every task through its extraction, search and
metrics; a finished cell is skipped on a rerun. Writes OUT/comparison.{md,csv,json,png}.
"""
from __future__ import annotations

import argparse
import functools
import os

from real20m.cli.compare_cells import (LAUNCHERS, TASKS, Cell, cell_paths, check_options, ensure_dataset, is_done,
                                       plan_cells, read_cell_metrics, read_done, run_cell)
from real20m.cli.compare_grid import Grid, GridOverrides, Variant, apply_overrides, load_grid, parse_dataset
from real20m.cli.compare_report import Comparison, ResultGroup, VariantResult, write_outputs
from real20m.cli.compare_summary import summarize_variant
from real20m.utils.entry import add_version_argument, exit_on_input_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("grid", help="grid YAML file: variants, datasets, seeds")
    parser.add_argument("--out", required=True, help="folder for the datasets, runs and comparison files")
    parser.add_argument("--datasets", nargs="+", type=_dataset_argument, metavar="FAMILY:SEED",
                        help="synthetic datasets instead of the grid's, e.g. products:0 household:1")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="training seeds instead of the grid's")
    parser.add_argument("--max_steps", type=int, metavar="N",
                        help="optimizer steps per run instead of the grid's (0: the configs' epochs)")
    parser.add_argument("--launcher", default="subprocess", choices=sorted(LAUNCHERS),
                        help="run the trainer in a fresh interpreter per cell, or in this process (sees "
                             "components registered by the caller)")
    add_version_argument(parser)
    return parser


def _dataset_argument(text: str):
    try:
        return parse_dataset(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run(argv=None) -> Comparison:
    args = build_parser().parse_args(argv)
    overrides = GridOverrides(datasets=tuple(args.datasets) if args.datasets else None,
                              seeds=tuple(args.seeds) if args.seeds else None, max_steps=args.max_steps)
    grid = apply_overrides(load_grid(args.grid, tuple(TASKS)), overrides)
    out = os.path.abspath(args.out)
    cells = plan_cells(grid)
    _check_unfinished_variants(grid, cells, out)
    for dataset in grid.datasets:
        ensure_dataset(out, dataset, dict(grid.dataset_sizes))
    for cell in cells:
        run_cell(grid, cell, out, args.launcher)
    comparison = Comparison(args.grid, grid, result_groups(grid, cells, out))
    for path in write_outputs(comparison, out):
        print(f"wrote {path}")
    return comparison


def _check_unfinished_variants(grid: Grid, cells: list[Cell], out: str) -> None:
    """Each variant with a cell left to train: its options resolve (a finished one was trained)."""
    to_run = [cell for cell in cells if not is_done(grid, cell, out)]
    for variant in dict.fromkeys(cell.variant for cell in to_run):
        check_options(grid, next(cell for cell in to_run if cell.variant == variant), out)


def result_groups(grid: Grid, cells: list[Cell], out: str) -> tuple[ResultGroup, ...]:
    """One group per dataset (the spread over seeds), then every run when there are several datasets."""
    groups = [(str(dataset), [cell for cell in cells if cell.dataset == dataset]) for dataset in grid.datasets]
    if len(groups) > 1:
        groups.append(("all datasets", cells))
    return tuple(ResultGroup(name, tuple(_variant_result(grid, variant, chosen, out) for variant in grid.variants))
                 for name, chosen in groups)


def _variant_result(grid: Grid, variant: Variant, cells: list[Cell], out: str) -> VariantResult:
    mine = [cell for cell in cells if cell.variant == variant]
    runs = [read_cell_metrics(out, cell, grid.tasks) for cell in mine]
    train_s = sum(read_done(cell_paths(out, cell).run_dir)["train_s"] for cell in mine) / len(mine)
    return VariantResult(variant, len(mine), train_s, summarize_variant(runs, grid.tasks))


def main(argv=None) -> None:
    exit_on_input_error(functools.partial(run, argv))


if __name__ == "__main__":
    main()
