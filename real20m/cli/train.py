"""``real20m-train``: train the QCD cross-domain embedding model, or with --evaluate write the
features of a test file (the same as ``python main_cross_domain_emb.py``).

    real20m-train --config tiny --data_root Dataset --output_dir outputs
    torchrun --nproc_per_node 8 -m real20m.cli.train --config paper --data_root Dataset
    real20m-train --evaluate --resume outputs/checkpoints/last.pth.tar \\
        --test_file Dataset/test_file/goods_gallery.txt --output_dir outputs/eval/video2goods/gallery

The original release's flag names (--train_file, --goods_img_root, --clip_length, --is_xbm, ...)
are accepted; see `--help` or real20m/config.py.
"""
import functools

from real20m.config import ConfigError, parse_config
from real20m.datasets.annotations import AnnotationError, UnsafePathError
from real20m.engine.checkpoint import CheckpointError
from real20m.evaluate.extract import EmbeddingInputError
from real20m.evaluate.feature_io import FeatureFileError
from real20m.models.release_layout import ReleaseLayoutError, WeightMismatchError
from real20m.models.towers import PretrainedInputError, PretrainedNotAvailableError
from real20m.utils.entry import exit_on_input_error

INPUT_ERRORS = (AnnotationError, UnsafePathError, CheckpointError, FeatureFileError, ConfigError,
                ReleaseLayoutError, WeightMismatchError, EmbeddingInputError, PretrainedNotAvailableError,
                PretrainedInputError)


def run(argv=None) -> None:
    """Train or write features; input errors propagate (``main`` turns them into one line)."""
    cfg = parse_config(argv)
    if cfg.run.evaluate:
        from real20m.engine.inference import write_features
        write_features(cfg)
    else:
        from real20m.engine.trainer import train
        train(cfg)


def main(argv=None) -> None:
    exit_on_input_error(functools.partial(run, argv), INPUT_ERRORS)


if __name__ == "__main__":
    main()
