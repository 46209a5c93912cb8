"""``real20m-train``: train the QCD cross-domain embedding model, or with --evaluate write the
features of a test file (the same as ``python main_cross_domain_emb.py``).

    real20m-train --config tiny --data_root Dataset --output_dir outputs
    torchrun --nproc_per_node 8 -m real20m.cli.train --config paper --data_root Dataset
    real20m-train --evaluate --resume outputs/checkpoints/last.pth.tar \\
        --test_file Dataset/test_file/goods_gallery.txt --output_dir outputs/eval/video2goods/gallery

The original release's flag names (--train_file, --goods_img_root, --clip_length, --is_xbm, ...)
are accepted; see `--help` or real20m/config/.
"""
import functools

from real20m.config import read_layers, resolve_layers
from real20m.utils.entry import exit_on_input_error


def run(argv=None) -> int | None:
    """Train, or write features and return their count; input errors propagate (``main`` turns
    them into one line).

    Writing features layers the input settings the checkpoint was trained with between the
    YAML file and the command line; the checkpoint is read once, for that and for its weights."""
    layers = read_layers(argv)
    if layers.value("run.evaluate"):
        from real20m.engine.inference import write_features
        from real20m.model_source import inspect_source
        source = inspect_source(layers.resume_path())
        return write_features(resolve_layers(layers, source.trained_settings()), source)
    else:
        from real20m.engine.trainer import train
        train(resolve_layers(layers))
        return None


def main(argv=None) -> None:
    exit_on_input_error(functools.partial(run, argv))


if __name__ == "__main__":
    main()
