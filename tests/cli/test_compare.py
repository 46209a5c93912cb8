"""``real20m-compare``: the smoke run of a two-variant grid writes the four outputs with one row per
variant, a rerun trains nothing again, and the aggregation matches a hand calculation."""
import csv
import json
import math
import os

import pytest
import torch
import yaml

from real20m.cli import compare
from real20m.cli.compare_cells import (DATA_MARKER, DONE_MARKER, TASKS, Cell, cell_paths, check_options, plan_cells,
                                       train_args)
from real20m.cli.compare_grid import DatasetSpec, GridOverrides, apply_overrides, load_grid
from real20m.cli.compare_summary import bootstrap_mean_interval, summarize
from real20m.losses.terms import TERMS, TermInputs, register_term

# Test split of 10 queries x 5 items: a 50-item gallery, so Recall@50 exists.
SIZES = {"num_queries": 16, "num_test_queries": 10, "num_val_queries": 0, "goods_per_query": 5,
         "videos_per_query": 5, "frames_per_video": 3, "image_size": 32}
SMALL_RUNS = {"data.workers": 0, "data.batch_size": 8, "data.image_size": 32, "data.clip_length": 3}


def write_grid(folder, variants, **extra):
    grid = {"config": "tiny", "max_steps": 50, "datasets": ["household:1"], "seeds": [0, 1],
            "dataset_sizes": SIZES, "options": SMALL_RUNS, "variants": variants, **extra}
    path = os.path.join(folder, "grid.yaml")
    with open(path, "w", encoding="utf-8") as file:
        yaml.safe_dump(grid, file)
    return path


SMOKE_VARIANTS = [{"name": "qcd"}, {"name": "title_only", "options": {"model.fusion": "title_only"}}]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare")
    grid = write_grid(str(folder), SMOKE_VARIANTS)
    out = str(folder / "out")
    argv = [grid, "--datasets", "products:0", "--seeds", "0", "--max_steps", "5", "--out", out]
    compare.main(argv)
    return argv, out


def test_smoke_run_writes_the_four_outputs_with_one_row_per_variant(smoke):
    _, out = smoke
    assert sorted(name for name in os.listdir(out) if name.startswith("comparison")) == [
        "comparison.csv", "comparison.json", "comparison.md", "comparison.png"]
    with open(os.path.join(out, "comparison.png"), "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(out, "comparison.csv"), encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert [row["variant"] for row in rows] == ["qcd", "title_only"]
    summary_table = open(os.path.join(out, "comparison.md"), encoding="utf-8").read().split("## ")[1]
    assert [line.split(" | ")[0] for line in summary_table.splitlines() if line.startswith("| ")][1:] == [
        "| qcd", "| title_only"]
    document = json.load(open(os.path.join(out, "comparison.json"), encoding="utf-8"))
    # The command line replaced the grid's datasets, seeds and steps.
    assert (document["datasets"], document["seeds"], document["max_steps"]) == (["products:0"], [0], 5)
    assert os.listdir(os.path.join(out, "data")) == ["products_seed0"]
    for row, (name, variant) in zip(rows, document["variants"].items()):
        assert variant["runs"] == 1 and set(variant["tasks"]) == set(TASKS)
        run_dir = os.path.join(out, "runs", name, "products_seed0", "seed0")
        checkpoint = torch.load(os.path.join(run_dir, "checkpoints", "last.pth.tar"), map_location="cpu",
                                weights_only=True)
        assert checkpoint["global_step"] == 5
        for task in TASKS:
            metrics = json.load(open(os.path.join(run_dir, "eval", task, "metrics.json"), encoding="utf-8"))
            for name_k in ("recall@1", "recall@5", "recall@10", "recall@50", "hit@10"):
                assert variant["tasks"][task][name_k]["mean"] == pytest.approx(metrics[name_k])
                assert float(row[f"{task}/{name_k}/mean"]) == pytest.approx(metrics[name_k], abs=1e-6)
            assert variant["tasks"][task]["recall@50"]["mean"] == 1.0   # the whole gallery
    assert document["variants"]["title_only"]["options"] == {"model.fusion": "title_only"}


def test_a_rerun_skips_the_finished_cells(smoke, capsys):
    argv, out = smoke
    checkpoints = [os.path.join(out, "runs", name, "products_seed0", "seed0", "checkpoints", "last.pth.tar")
                   for name in ("qcd", "title_only")]
    before = [os.stat(path).st_mtime_ns for path in checkpoints]
    first = json.load(open(os.path.join(out, "comparison.json"), encoding="utf-8"))
    compare.main(argv)
    printed = capsys.readouterr().out
    assert printed.count("done already, skipped") == 2 and "training" not in printed
    assert [os.stat(path).st_mtime_ns for path in checkpoints] == before
    assert json.load(open(os.path.join(out, "comparison.json"), encoding="utf-8")) == first


def test_a_rerun_with_other_steps_is_refused_rather_than_mixed(smoke, capsys):
    argv, out = smoke
    with pytest.raises(SystemExit) as stopped:
        compare.main([*argv[:-4], "--max_steps", "6", "--out", out])
    assert stopped.value.code == 2
    assert "use another --out" in capsys.readouterr().err


def fake_finished_runs(tmp_path, values, intervals=None, datasets=("products:0",)):
    """A grid of one variant, ``datasets`` and len(values) / len(datasets) seeds whose cells are
    marked done with made-up metrics.json files: recall@10 = values[i] (and its interval) in every
    task, i counting the seeds of the first dataset first."""
    grid_file = write_grid(str(tmp_path), [{"name": "made_up"}], datasets=list(datasets),
                           seeds=list(range(len(values) // len(datasets))))
    out = str(tmp_path / "out")
    grid = apply_overrides(load_grid(grid_file, tuple(TASKS)), GridOverrides())
    for dataset in grid.datasets:
        os.makedirs(os.path.join(out, "data", dataset.name))
        with open(os.path.join(out, "data", dataset.name, DATA_MARKER), "w", encoding="utf-8") as file:
            json.dump({"family": dataset.family, "seed": dataset.seed, "sizes": SIZES}, file)
    for index, cell in enumerate(plan_cells(grid)):
        paths = cell_paths(out, cell)
        for task in TASKS:
            metrics = {"recall@10": values[index], "hit@10": 1.0}
            if intervals is not None:
                metrics["intervals"] = {"recall@10": intervals[index]}
            os.makedirs(os.path.dirname(paths.metrics(task)))
            with open(paths.metrics(task), "w", encoding="utf-8") as file:
                json.dump(metrics, file)
        with open(os.path.join(paths.run_dir, DONE_MARKER), "w", encoding="utf-8") as file:
            json.dump({"train_args": train_args(grid, cell, paths), "tasks": list(TASKS), "train_s": 10.0 * index},
                      file)
    compare.main([grid_file, "--out", out])
    return json.load(open(os.path.join(out, "comparison.json"), encoding="utf-8")), out


def test_mean_std_and_interval_over_seeds_match_a_hand_calculation(tmp_path):
    document, out = fake_finished_runs(tmp_path, [0.2, 0.4, 0.6])
    recall = document["variants"]["made_up"]["tasks"]["video2goods"]["recall@10"]
    std = math.sqrt(((0.2 - 0.4) ** 2 + 0 + (0.6 - 0.4) ** 2) / 3)
    assert (recall["mean"], recall["std"]) == (pytest.approx(0.4), pytest.approx(std))
    # A resample of three runs is all the lowest with probability 1/27 > 2.5% (the highest likewise),
    # so the percentile interval of the mean is [lowest, highest].
    assert (recall["low"], recall["high"], recall["interval_source"]) == (pytest.approx(0.2), pytest.approx(0.6),
                                                                         "runs")
    assert document["variants"]["made_up"]["train_s"] == pytest.approx(10.0)
    markdown = open(os.path.join(out, "comparison.md"), encoding="utf-8").read()
    assert "| made_up | 3 | 0.400 ± 0.163 [0.200, 0.600] |" in markdown
    with open(os.path.join(out, "comparison.csv"), encoding="utf-8") as file:
        (row,) = csv.DictReader(file)
    assert [row[f"goods2video/recall@10/{name}"] for name in ("mean", "std", "low", "high")] == [
        "0.400000", f"{std:.6f}", "0.200000", "0.600000"]
    assert row["goods2video/recall@50/mean"] == ""   # not in the metrics files: left empty


def test_each_dataset_gets_the_spread_over_its_seeds_and_all_datasets_pool_them(tmp_path):
    document, out = fake_finished_runs(tmp_path, [0.2, 0.4, 0.7, 0.9], datasets=("products:0", "household:0"))
    groups = document["variants"]["made_up"]["datasets"]
    assert list(groups) == ["products:0", "household:0", "all datasets"]
    recall = {name: group["tasks"]["video2goods"]["recall@10"] for name, group in groups.items()}
    assert (recall["products:0"]["mean"], recall["products:0"]["std"]) == (pytest.approx(0.3), pytest.approx(0.1))
    assert (recall["household:0"]["mean"], recall["household:0"]["std"]) == (pytest.approx(0.8), pytest.approx(0.1))
    assert recall["all datasets"]["values"] == pytest.approx([0.2, 0.4, 0.7, 0.9])
    assert document["variants"]["made_up"]["runs"] == 4   # the top level is every run
    markdown = open(os.path.join(out, "comparison.md"), encoding="utf-8").read()
    assert "## household:0: R@10 of every task" in markdown and "## all datasets: goods2video" in markdown
    with open(os.path.join(out, "comparison.csv"), encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert [(row["datasets"], row["runs"]) for row in rows] == [("products:0", "2"), ("household:0", "2"),
                                                                ("all datasets", "4")]


def test_the_runs_own_intervals_are_averaged_when_every_run_has_one(tmp_path):
    document, _ = fake_finished_runs(tmp_path, [0.2, 0.4, 0.6], intervals=[[0.1, 0.3], [0.3, 0.5], [0.5, 0.8]])
    recall = document["variants"]["made_up"]["tasks"]["query2video"]["recall@10"]
    assert (recall["low"], recall["high"], recall["interval_source"]) == (pytest.approx(0.3), pytest.approx(1.6 / 3),
                                                                         "queries")
    # One run without an interval: the bootstrap over the runs instead.
    mixed = summarize([{"recall@10": 0.2, "intervals": {"recall@10": {"low": 0.1, "high": 0.3}}},
                       {"recall@10": 0.4}], "recall@10")
    assert (mixed.low, mixed.high, mixed.interval_source) == (pytest.approx(0.2), pytest.approx(0.4), "runs")


def test_the_bootstrap_interval_is_seeded_and_shrinks_with_more_runs():
    values = [0.3, 0.5, 0.4, 0.6, 0.45]
    assert bootstrap_mean_interval(values) == bootstrap_mean_interval(values)
    few_low, few_high = bootstrap_mean_interval(values)
    many_low, many_high = bootstrap_mean_interval(values * 8)
    assert few_low < sum(values) / len(values) < few_high
    assert many_high - many_low < (few_high - few_low) / 2


def test_a_variant_with_a_bad_option_stops_before_any_training(tmp_path, capsys):
    grid = write_grid(str(tmp_path), [{"name": "qcd"}, {"name": "broken", "options": {"model.fusion": "nonesuch"}}])
    out = str(tmp_path / "out")
    with pytest.raises(SystemExit) as stopped:
        compare.main([grid, "--datasets", "products:0", "--seeds", "0", "--out", out])
    assert stopped.value.code == 2
    printed = capsys.readouterr().err
    assert printed.strip().splitlines()[-1].startswith("error: variant 'broken':") and "nonesuch" in printed
    assert not os.path.exists(out)   # neither a dataset generated nor a run started


def test_grid_mistakes_are_one_line_naming_the_file_and_key(tmp_path, capsys):
    grid = write_grid(str(tmp_path), [{"name": "qcd", "option": {}}])
    with pytest.raises(SystemExit):
        compare.main([grid, "--out", str(tmp_path / "out")])
    assert capsys.readouterr().err.strip() == (
        f"error: {grid}: variant 'qcd': unknown key(s) ['option']; known: ['config', 'description', 'name', "
        "'options']")
    with pytest.raises(SystemExit):
        compare.main([grid, "--datasets", "shoes:0", "--out", str(tmp_path / "out")])
    assert "FAMILY one of ['household', 'products']" in capsys.readouterr().err
    grid = write_grid(str(tmp_path), [{"name": "qcd"}], datasets=["shoes:0"])
    with pytest.raises(SystemExit):
        compare.main([grid, "--out", str(tmp_path / "out")])
    assert capsys.readouterr().err.startswith(f"error: {grid}: dataset 'shoes:0': expected FAMILY:SEED")


def test_the_shipped_grid_reads_names_every_ablation_and_every_variant_resolves(tmp_path):
    grid = load_grid(os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "grids", "comparison.yaml"),
                     tuple(TASKS))
    options = {variant.name: dict(variant.options) for variant in grid.variants}
    assert options["qcd"] == {}
    assert options["frames_mean"] == {"model.frame_aggregation": "mean"}
    assert options["item_pairs"] == {"loss.query_guidance": False}
    assert {options["title_only"]["model.fusion"], options["visual_only"]["model.fusion"]} == {"title_only",
                                                                                                 "visual_only"}
    assert grid.datasets == (DatasetSpec("products", 2), DatasetSpec("household", 2)) and grid.seeds == (0, 1, 2)
    for variant in grid.variants:   # a renamed component or term fails here, not hours into a run
        check_options(grid, Cell(variant, grid.datasets[0], 0), str(tmp_path))


@pytest.fixture
def cosine_term():
    """A loss term registered here alone (removed afterwards); it counts the training steps it served."""
    calls = []

    def query_item_cosine_distance(inputs: TermInputs):
        calls.append(1)
        return (1 - (inputs.local["query"] * inputs.local["fused"]).sum(dim=-1)).mean()

    register_term("compare_test_cosine", gathers=("query", "fused"))(query_item_cosine_distance)
    yield calls
    del TERMS["compare_test_cosine"]


def test_the_in_process_launcher_trains_a_component_registered_by_the_caller(tmp_path, cosine_term):
    grid = write_grid(str(tmp_path), [{"name": "with_cosine", "options": {"loss.weights.compare_test_cosine": 0.5}}])
    out = str(tmp_path / "out")
    compare.main([grid, "--datasets", "products:0", "--seeds", "0", "--max_steps", "3", "--out", out,
                  "--launcher", "in_process"])
    assert len(cosine_term) == 3   # one call a training step
    run_dir = os.path.join(out, "runs", "with_cosine", "products_seed0", "seed0")
    with open(os.path.join(run_dir, "config.yaml"), encoding="utf-8") as file:
        assert yaml.safe_load(file)["loss"]["weights"]["compare_test_cosine"] == 0.5
    document = json.load(open(os.path.join(out, "comparison.json"), encoding="utf-8"))
    assert list(document["variants"]) == ["with_cosine"] and document["variants"]["with_cosine"]["runs"] == 1


def test_the_differences_section_names_the_variants_whose_intervals_are_disjoint_from_the_first():
    from real20m.cli.compare_grid import Variant
    from real20m.cli.compare_report import ResultGroup, VariantResult, differences_section
    from real20m.cli.compare_summary import MetricSummary

    def result(name, low, high):
        summary = MetricSummary((low + high) / 2, 0.0, low, high, ((low + high) / 2,), "queries")
        return VariantResult(Variant(name, "tiny"), 1, 1.0, {"video2goods": {"recall@10": summary}})

    results = (result("qcd", 0.50, 0.60), result("better", 0.61, 0.71), result("touching", 0.60, 0.70),
               result("worse", 0.30, 0.40), result("inside", 0.52, 0.58))
    lines = differences_section(ResultGroup("products:0", results), ("video2goods",))
    assert lines[0] == "Differences from qcd at R@10 outside the intervals:"
    assert lines[2] == "- video2goods: above: better (+0.110); below: worse (-0.200)"
