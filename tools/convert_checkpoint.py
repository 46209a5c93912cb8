"""Convert a checkpoint (the paper's release layout, or ours) to safetensors + config.json (see
real20m/cli/convert.py; installed as `real20m-convert`).

    python tools/convert_checkpoint.py checkpoint.pth.tar converted/
    python tools/convert_checkpoint.py tiny.pth.tar converted/ --release-config config.json
"""
import sys

from real20m.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
