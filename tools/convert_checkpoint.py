"""Convert a checkpoint (the paper's release layout, or ours) to safetensors + config.json.

    python tools/convert_checkpoint.py checkpoint.pth.tar converted/
    python tools/convert_checkpoint.py tiny.pth.tar converted/ --release-config config.json

DST_DIR receives `model.safetensors` and `config.json` (the model config);
`real20m.models.load_converted(DST_DIR)` rebuilds the model from them.
"""
import argparse
import json
import logging
import sys

import yaml

from real20m.config import parse_config
from real20m.models.convert import convert_checkpoint


def read_model_config(path: str) -> dict:
    """A YAML/JSON file: a run config (resolved as training resolves it, so the frames per clip and
    image size come from its data section), or a bare architecture mapping."""
    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)  # YAML is a superset of JSON
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a mapping, got {type(cfg).__name__}")
    if "model" in cfg:
        return parse_config(["--config", path]).model.architecture()
    return cfg


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="checkpoint file (.pth.tar)")
    parser.add_argument("dst_dir", help="output folder")
    parser.add_argument("--release-config", help="cn_clip-style config.json for a release checkpoint "
                                                 "(default: the paper's ViT-B/16 + RoBERTa-base configuration)")
    parser.add_argument("--model-config", help="YAML/JSON model config for one of our checkpoints that "
                                               "does not carry `model_cfg`")
    parser.add_argument("--pad-token-id", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    release_cfg = None
    if args.release_config:
        with open(args.release_config, encoding="utf-8") as f:
            release_cfg = json.load(f)
    model_cfg = read_model_config(args.model_config) if args.model_config else None
    convert_checkpoint(args.src, args.dst_dir, release_cfg, model_cfg, args.pad_token_id)
    print(f"wrote {args.dst_dir}/model.safetensors and {args.dst_dir}/config.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
