"""``python -m real20m.evaluate``: same as ``python evaluation.py``."""

from real20m.evaluate.cli import main

main()
