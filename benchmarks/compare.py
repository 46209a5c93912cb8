"""``real20m-compare`` from a checkout: train and score the variants of a grid side by side.

    python benchmarks/compare.py benchmarks/grids/comparison.yaml --out /tmp/comparison
    python benchmarks/compare.py benchmarks/grids/comparison.yaml --datasets products:0 --seeds 0 \\
        --max_steps 5 --out /tmp/smoke

Writes OUT/comparison.{md,csv,json,png}; see real20m/cli/compare.py.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from real20m.cli.compare import main  # noqa: E402

if __name__ == "__main__":
    main()
