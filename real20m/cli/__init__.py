"""The console entry points (``[project.scripts]`` in pyproject.toml), one module each.

    real20m-train            real20m.cli.train            (python main_cross_domain_emb.py)
    real20m-eval             real20m.evaluate.cli         (python evaluation.py)
    real20m-extract-frames   real20m.cli.extract_frames   (python tools/extract_frames.py)
    real20m-convert          real20m.cli.convert          (python tools/convert_checkpoint.py)
    real20m-make-synthetic   real20m.cli.make_synthetic   (python -m real20m.datasets.synthetic)
    real20m-search           real20m.search_cli
    real20m-serve            real20m.serve

The scripts at the repository root and in tools/ only call these, so an installed package (no
checkout) has every command. ``python -m real20m.cli.processes`` is the process-count check that
train.sh runs before a single-node multi-GPU launch.
"""
