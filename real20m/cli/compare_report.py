"""The comparison's four outputs under OUT: ``comparison.json`` (everything, with every run's
value), ``comparison.csv`` (one row per variant and dataset group, a mean/std/low/high column per
task and metric), ``comparison.md`` (per dataset group: a summary table at Recall@10, the
differences from the first variant that fall outside the intervals, and one table per task, one
row per variant) and ``comparison.png`` (Recall@K curves per variant; bars at Recall@10 with their
intervals; over all the runs). Each is written whole or not at all.

A dataset group is one dataset (its runs differ by training seed only, so the std is the spread
over seeds) and, when the grid has several datasets, all of them together."""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass

from real20m.cli.compare_grid import Grid, Variant
from real20m.cli.compare_summary import CURVE_KS, TABLE_METRICS, MetricSummary
from real20m.utils.atomic import atomic_open, atomic_path

OUTPUT_NAMES = ("comparison.md", "comparison.csv", "comparison.json", "comparison.png")
HEADLINE_METRIC = "recall@10"
STATISTICS = ("mean", "std", "low", "high")


@dataclass(frozen=True)
class VariantResult:
    variant: Variant
    runs: int
    train_s: float   # mean training wall time of its runs
    tasks: dict[str, dict[str, MetricSummary]]


@dataclass(frozen=True)
class ResultGroup:
    """Every variant's result over the runs of some datasets: one (``products:2``) or all."""
    name: str
    results: tuple[VariantResult, ...]


@dataclass(frozen=True)
class Comparison:
    grid_file: str
    grid: Grid
    groups: tuple[ResultGroup, ...]   # one per dataset, then all datasets when there are several

    @property
    def overall(self) -> ResultGroup:
        """The group of every run."""
        return self.groups[-1]


def write_outputs(comparison: Comparison, out: str) -> list[str]:
    writers = (write_markdown, write_csv, write_json, write_plot)
    paths = [os.path.join(out, name) for name in OUTPUT_NAMES]
    for writer, path in zip(writers, paths):
        writer(comparison, path)
    return paths


def _label(metric: str) -> str:
    return metric.replace("recall@", "R@")


def _cell(summary: MetricSummary | None) -> str:
    if summary is None:
        return "-"
    return f"{summary.mean:.3f} ± {summary.std:.3f} [{summary.low:.3f}, {summary.high:.3f}]"


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def markdown(comparison: Comparison) -> str:
    grid = comparison.grid
    steps = f"{grid.max_steps} steps" if grid.max_steps else "the configs' epochs"
    lines = [f"# Comparison: {comparison.grid_file}", "",
             f"Datasets {', '.join(map(str, grid.datasets))}; training seeds {', '.join(map(str, grid.seeds))}; "
             f"{steps}. Each cell: mean ± std over the runs (the seeds; with all datasets, seeds x datasets) "
             "[95% interval].", ""]
    for group in comparison.groups:
        lines += [f"## {group.name}: {_label(HEADLINE_METRIC)} of every task", ""]
        lines += _markdown_table(["variant", "runs", *grid.tasks, "train s"], [
            [result.variant.name, str(result.runs),
             *(_cell(result.tasks[task].get(HEADLINE_METRIC)) for task in grid.tasks), f"{result.train_s:.1f}"]
            for result in group.results])
        lines += differences_section(group, grid.tasks)
    for group in comparison.groups:
        for task in grid.tasks:
            lines += [f"## {group.name}: {task}", ""]
            lines += _markdown_table(["variant", *map(_label, TABLE_METRICS)], [
                [result.variant.name, *(_cell(result.tasks[task].get(name)) for name in TABLE_METRICS)]
                for result in group.results])
    return "\n".join(lines)


def outside_intervals(reference: MetricSummary, other: MetricSummary) -> str:
    """"above" or "below" when the two 95% intervals are disjoint, else "" (a conservative test:
    disjoint intervals differ at well below the 5% level)."""
    if other.low > reference.high:
        return "above"
    if other.high < reference.low:
        return "below"
    return ""


def differences_section(group: ResultGroup, tasks: tuple[str, ...]) -> list[str]:
    """Per task, the variants whose headline interval is disjoint from the first variant's."""
    reference, *others = group.results
    lines = [f"Differences from {reference.variant.name} at {_label(HEADLINE_METRIC)} outside the intervals:", ""]
    for task in tasks:
        base = reference.tasks[task].get(HEADLINE_METRIC)
        found = {"above": [], "below": []}
        for result in others:
            summary = result.tasks[task].get(HEADLINE_METRIC)
            side = outside_intervals(base, summary) if base and summary else ""
            if side:
                found[side].append(f"{result.variant.name} ({summary.mean - base.mean:+.3f})")
        listed = "; ".join(f"{side}: {', '.join(names)}" for side, names in found.items() if names)
        lines.append(f"- {task}: {listed or 'none'}")
    return [*lines, ""]


def write_markdown(comparison: Comparison, path: str) -> None:
    with atomic_open(path, encoding="utf-8") as file:
        file.write(markdown(comparison))


def csv_columns(tasks: tuple[str, ...]) -> list[tuple[str, str, str]]:
    return [(task, name, statistic) for task in tasks for name in TABLE_METRICS for statistic in STATISTICS]


def write_csv(comparison: Comparison, path: str) -> None:
    columns = csv_columns(comparison.grid.tasks)
    with atomic_open(path, encoding="utf-8") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(["variant", "datasets", "runs", "train_s",
                         *(f"{task}/{name}/{statistic}" for task, name, statistic in columns)])
        for group in comparison.groups:
            for result in group.results:
                values = []
                for task, name, statistic in columns:
                    summary = result.tasks[task].get(name)
                    values.append("" if summary is None else f"{getattr(summary, statistic):.6f}")
                writer.writerow([result.variant.name, group.name, result.runs, f"{result.train_s:.2f}", *values])


def write_json(comparison: Comparison, path: str) -> None:
    grid = comparison.grid
    document = {
        "grid": comparison.grid_file, "datasets": [str(dataset) for dataset in grid.datasets],
        "seeds": list(grid.seeds), "max_steps": grid.max_steps, "tasks": list(grid.tasks),
        "variants": {result.variant.name: {
            "config": result.variant.config, "options": dict(result.variant.options),
            "description": result.variant.description, **_result_dict(result),
            "datasets": {group.name: _result_dict(group.results[index]) for group in comparison.groups}}
            for index, result in enumerate(comparison.overall.results)}}
    with atomic_open(path, encoding="utf-8") as file:
        json.dump(document, file, indent=1)


def _result_dict(result: VariantResult) -> dict:
    return {"runs": result.runs, "train_s": result.train_s,
            "tasks": {task: {name: summary.as_dict() for name, summary in metrics.items()}
                      for task, metrics in result.tasks.items()}}


def write_plot(comparison: Comparison, path: str) -> None:
    """One row per task: Recall@K curves (left), Recall@10 bars with the 95% interval (right), over
    every run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = comparison.grid.tasks
    figure, axes = plt.subplots(len(tasks), 2, figsize=(11, 3.2 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        _plot_curves(row[0], comparison.overall.results, task)
        _plot_bars(row[1], comparison.overall.results, task)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=90)
    plt.close(figure)


def _plot_curves(axis, results: tuple[VariantResult, ...], task: str) -> None:
    from matplotlib import colormaps
    # 20 colours and 4 markers: a grid's variants stay distinguishable past the default 10 colours.
    colours = colormaps["tab20"].colors
    for index, result in enumerate(results):
        points = [(k, result.tasks[task][f"recall@{k}"].mean) for k in CURVE_KS if f"recall@{k}" in result.tasks[task]]
        if points:
            axis.plot(*zip(*points), marker="os^D"[index % 4], color=colours[index % len(colours)],
                      label=result.variant.name)
    axis.set_xscale("log")
    axis.set_xlabel("K")
    axis.set_ylabel("Recall@K")
    axis.set_ylim(0, 1.02)
    axis.set_title(f"{task}: Recall@K (mean over runs)")
    axis.legend(fontsize="x-small", loc="best")


def _plot_bars(axis, results: tuple[VariantResult, ...], task: str) -> None:
    names = [result.variant.name for result in results]
    summaries = [result.tasks[task].get(HEADLINE_METRIC) for result in results]
    means = [summary.mean if summary else 0.0 for summary in summaries]
    # An interval from the runs' own intervals need not be centred on the mean of the values.
    errors = [[max(0.0, summary.mean - summary.low) if summary else 0.0 for summary in summaries],
              [max(0.0, summary.high - summary.mean) if summary else 0.0 for summary in summaries]]
    axis.bar(range(len(names)), means, yerr=errors, capsize=4, color="tab:blue", alpha=0.8)
    axis.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize="small")
    axis.set_ylim(0, 1.02)
    axis.set_ylabel(_label(HEADLINE_METRIC))
    axis.set_title(f"{task}: {_label(HEADLINE_METRIC)} with 95% interval")
