"""Write a Real400K-layout dataset as WebDataset tar shards (see real20m/cli/make_shards.py; installed as
`real20m-make-shards`).

    python tools/make_shards.py --data_root Dataset --out Dataset/shards --workers 8
"""
import sys

from real20m.cli.make_shards import main

if __name__ == "__main__":
    sys.exit(main())
