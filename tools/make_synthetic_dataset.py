"""Write the synthetic Real400K-style dataset (same flags as `python -m real20m.datasets.synthetic`;
installed as `real20m-make-synthetic`).

    python tools/make_synthetic_dataset.py --out Dataset --seed 0
"""
import sys

from real20m.cli.make_synthetic import main

if __name__ == "__main__":
    sys.exit(main())
