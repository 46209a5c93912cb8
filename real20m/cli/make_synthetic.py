"""``real20m-make-synthetic``: write the synthetic Real400K-style dataset (the flags of
``python -m real20m.datasets.synthetic``).

    real20m-make-synthetic --out Dataset --seed 0
"""
from real20m.datasets import synthetic
from real20m.utils.entry import exit_on_input_error


def main(argv=None) -> int:
    # synthetic.main returns its summary dict, which a console script would take for an exit status.
    exit_on_input_error(lambda: synthetic.main(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
