"""The learning-quality table the README quotes: mean ± std per family, wall and CPU minutes."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import learning_quality  # noqa: E402


def scores(r10):
    return {task: {"R@1": r10 / 4, "R@10": r10, "R@100": min(1.0, r10 + 0.1), "chance_R@10": 0.028}
            for task in ("video2goods", "goods2video")}


def row(seed, untrained, floor, recipe):
    return {"style": "products", "seed": seed, "untrained": scores(untrained), "floor": scores(floor),
            "recipe": scores(recipe), "floor_wall_s": 60.0, "floor_cpu_s": 90.0,
            "recipe_wall_s": 120.0 * seed, "recipe_cpu_s": 240.0 * seed}


def test_table_has_one_line_per_model_with_means_stds_and_both_clocks():
    lines = learning_quality.table([row(1, 0.1, 0.5, 0.8), row(2, 0.2, 0.7, 0.9)]).splitlines()
    assert lines[0].endswith("| chance R@10 | train wall min | train CPU min |")
    cells = {line.split(" | ")[1]: line.strip("| ").split(" | ") for line in lines[2:]}
    assert list(cells) == ["untrained", "floor", "recipe"]
    assert cells["recipe"][0] == "products (seeds 1, 2)"
    assert cells["recipe"][3] == "0.850 ± 0.050"            # video2goods R@10 over the two seeds
    assert cells["recipe"][-3:] == ["0.028", "3.0", "6.0"]  # chance, wall and CPU minutes (means)
    assert cells["untrained"][-2:] == ["-", "-"]
    assert cells["floor"][-2:] == ["1.0", "1.5"]


def test_the_check_fails_when_the_recipe_is_below_the_floor_or_near_untrained():
    assert learning_quality.issue_14_holds(row(1, 0.1, 0.5, 0.8))
    assert not learning_quality.issue_14_holds(row(1, 0.1, 0.8, 0.7))     # below the floor
    assert not learning_quality.issue_14_holds(row(1, 0.3, 0.5, 0.8))     # under 3x untrained at R@1 and @10
