"""Train the QCD cross-domain embedding model, or with --evaluate write the features of a test file.

    python main_cross_domain_emb.py --config configs/tiny.yaml --data_root Dataset --output_dir outputs
    torchrun --nproc_per_node 8 main_cross_domain_emb.py --config configs/paper.yaml --data_root Dataset
    python main_cross_domain_emb.py --evaluate --resume outputs/checkpoints/last.pth.tar \
        --test_file Dataset/test_file/goods_gallery.txt --output_dir outputs/eval/video2goods/gallery

The original release's flag names (--train_file, --goods_img_root, --clip_length, --is_xbm, ...)
are accepted; see `--help` or real20m/config.py.
"""
from real20m.config import ConfigError, parse_config
from real20m.datasets.annotations import AnnotationError, UnsafePathError
from real20m.engine.checkpoint import CheckpointError
from real20m.evaluate.extract import EmbeddingInputError
from real20m.evaluate.feature_io import FeatureFileError
from real20m.models.release_layout import ReleaseLayoutError, WeightMismatchError
from real20m.models.towers import PretrainedNotAvailableError
from real20m.utils.entry import exit_on_input_error

INPUT_ERRORS = (AnnotationError, UnsafePathError, CheckpointError, FeatureFileError, ConfigError,
                ReleaseLayoutError, WeightMismatchError, EmbeddingInputError, PretrainedNotAvailableError)


def main(argv=None) -> None:
    cfg = parse_config(argv)
    if cfg.run.evaluate:
        from real20m.engine.inference import write_features
        write_features(cfg)
    else:
        from real20m.engine.trainer import train
        train(cfg)


if __name__ == "__main__":
    exit_on_input_error(main, INPUT_ERRORS)
