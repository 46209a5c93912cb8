"""Extract JPEG frames from micro-videos into the Real400K image layout (see real20m/cli/extract_frames.py;
installed as `real20m-extract-frames`).

    python tools/extract_frames.py --videos raw_videos/ --out Dataset/Real400K/video/images --num-frames 8
"""
import sys

from real20m.cli.extract_frames import main

if __name__ == "__main__":
    sys.exit(main())
