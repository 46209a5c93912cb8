"""Feature files -> Faiss search -> Recall@K table (+ metrics.json, recall.png, report.html).

See ``python evaluation.py --help`` and real20m/evaluate/cli.py (installed as ``real20m-eval``).
"""

from real20m.evaluate.cli import main

if __name__ == "__main__":
    main()
