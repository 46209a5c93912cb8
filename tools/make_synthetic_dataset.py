"""Write the synthetic Real400K-style dataset (same flags as `python -m real20m.datasets.synthetic`).

    python tools/make_synthetic_dataset.py --out Dataset --seed 0
"""

from real20m.datasets.synthetic import main

if __name__ == "__main__":
    main()
