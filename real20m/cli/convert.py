"""``real20m-convert``: convert a checkpoint (the paper's release layout, or ours) to safetensors + config.json.

    real20m-convert checkpoint.pth.tar converted/
    real20m-convert tiny.pth.tar converted/ --release-config config.json
    python tools/convert_checkpoint.py ...   (the same, from a checkout)

DST_DIR receives `model.safetensors` and `config.json` (the model config); every option that takes a
checkpoint (`--resume`, `CKPT`, `Retriever.from_checkpoint`) also takes DST_DIR and rebuilds the model from them.
"""
import argparse
import functools
import logging

import yaml

from real20m.config import ConfigError, parse_config
from real20m.models.convert import convert_checkpoint
from real20m.utils.entry import add_version_argument, exit_on_input_error


def _read_mapping(path: str, flag: str) -> dict:
    """The mapping in a YAML/JSON file (YAML is a superset of JSON); ConfigError names the file."""
    try:
        with open(path, encoding="utf-8") as f:
            value = yaml.safe_load(f)
    except OSError as error:
        raise ConfigError(f"{flag} {path}: cannot read it ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{flag} {path}: not valid YAML/JSON ({str(error).splitlines()[0]})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{flag} {path}: expected a mapping, got {type(value).__name__}")
    return value


def read_model_config(path: str) -> dict:
    """A YAML/JSON file: a run config (resolved as training resolves it, so the frames per clip and
    image size come from its data section), or a bare architecture mapping."""
    cfg = _read_mapping(path, "--model-config")
    if "model" in cfg:
        return parse_config(["--config", path]).model.architecture()
    return cfg


def convert(args: argparse.Namespace) -> None:
    release_cfg = _read_mapping(args.release_config, "--release-config") if args.release_config else None
    model_cfg = read_model_config(args.model_config) if args.model_config else None
    convert_checkpoint(args.src, args.dst_dir, release_cfg, model_cfg, args.pad_token_id)
    print(f"wrote {args.dst_dir}/model.safetensors and {args.dst_dir}/config.json")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="checkpoint file (.pth.tar)")
    parser.add_argument("dst_dir", help="output folder")
    parser.add_argument("--release-config", help="cn_clip-style config.json for a release checkpoint "
                                                 "(default: the paper's ViT-B/16 + RoBERTa-base configuration)")
    parser.add_argument("--model-config", help="YAML/JSON model config for one of our checkpoints that "
                                               "does not carry `model_cfg`")
    parser.add_argument("--pad-token-id", type=int, default=0)
    add_version_argument(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    exit_on_input_error(functools.partial(convert, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
