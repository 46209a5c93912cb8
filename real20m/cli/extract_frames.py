"""``real20m-extract-frames``: extract JPEG frames from micro-videos into the Real400K image layout.

For every `<pid>.mp4` in --videos this writes, under --out (the video image root):

    <pid % 50000>/<pid>.jpg       cover (the first frame)
    <pid % 50000>/<pid>_<k>.jpg   sampled frame k = 0, 1, 2, ...

Frames are sampled either --num-frames N evenly spaced over the whole video, or at --fps R
frames per second. A file that cannot be decoded is reported, counted and skipped; the run goes
on. The exit code is non-zero only when videos were given and none of them could be decoded.

    real20m-extract-frames --videos raw_videos/ --out Dataset/Real400K/video/images --num-frames 8
    python tools/extract_frames.py ...   (the same, from a checkout)
"""

import argparse
import errno
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from real20m.datasets.layout import shard_folder
from real20m.errors import InputError
from real20m.utils.entry import add_version_argument, exit_on_input_error

JPEG_QUALITY = 90


class VideoDecodeError(InputError, RuntimeError):
    """A video could not be opened or yielded no frames."""


def parse_pid(path):
    """The integer pid of `<pid>.mp4`, or None when the stem is not a non-negative integer."""
    stem = Path(path).stem
    return int(stem) if stem.isdigit() else None


def evenly_spaced(total, count):
    """`count` frame indices spread over [0, total - 1], first and last included."""
    return [int(round(i)) for i in np.linspace(0, total - 1, num=min(count, total))]


# ---------------------------------------------------------------- PyAV backend


def _count_frames_av(av, path):
    """The container's frame count, or a count of the video packets when the header lacks it."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoDecodeError(f"{path}: no video stream")
        stream = container.streams.video[0]
        if stream.frames > 0:
            return stream.frames
        return sum(1 for packet in container.demux(stream) if packet.size > 0)


def _decode_av(path, num_frames, fps):
    """Return (cover, [sampled RGB images]) with PyAV, streaming so long videos need little memory."""
    import av

    try:
        wanted = set(evenly_spaced(_count_frames_av(av, path), num_frames)) if num_frames else None
        cover, sampled, next_time = None, [], None
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: no video stream")
            rate = float(container.streams.video[0].average_rate or 25)
            for index, frame in enumerate(container.decode(video=0)):
                image = None
                if cover is None:
                    cover = image = frame.to_image()
                if wanted is not None:
                    keep = index in wanted
                else:  # fps sampling: keep the first frame at or after each 1/fps tick
                    time_s = frame.time if frame.time is not None else index / rate
                    keep = next_time is None or time_s + 1e-6 >= next_time
                    if keep:  # ticks count from the first frame, whatever the stream's start time
                        next_time = (time_s if next_time is None else next_time) + 1.0 / fps
                if keep:
                    sampled.append(image if image is not None else frame.to_image())
    except av.FFmpegError as error:
        raise VideoDecodeError(f"{path}: cannot decode: {error}") from error
    if wanted is not None and sampled:
        # Header frame counts can exceed what decodes; repeat the last frame so every video
        # still gets N frames (the training loader expects a fixed count).
        sampled += [sampled[-1]] * (len(wanted) - len(sampled))
    return cover, sampled


# ---------------------------------------------------------------- decord backend


def _decode_decord(path, num_frames, fps):
    import decord

    try:
        reader = decord.VideoReader(str(path))
        total = len(reader)
        if total == 0:
            raise VideoDecodeError(f"{path}: no frames")
        if num_frames:
            indices = evenly_spaced(total, num_frames)
        else:
            step = max(reader.get_avg_fps() / fps, 1.0)
            indices = sorted({int(i) for i in np.arange(0, total, step)})
        frames = reader.get_batch(indices).asnumpy()
        cover = Image.fromarray(reader[0].asnumpy())
    except (decord.DECORDError, RuntimeError) as error:  # decord reports bad input either way
        raise VideoDecodeError(f"{path}: cannot decode: {error}") from error
    return cover, [Image.fromarray(frame) for frame in frames]


BACKENDS = {"av": _decode_av, "decord": _decode_decord}


def resolve_backend(name):
    """'auto' prefers decord when it is installed (faster random access), else PyAV."""
    if name != "auto":
        return name
    try:
        import decord  # noqa: F401
    except ImportError:
        return "av"
    return "decord"


def extract_video(path, out_root, num_frames=None, fps=None, backend="av"):
    """Decode one `<pid>.mp4` and write its cover and sampled frames; return the frame count.

    Raises ValueError for a bad file name or sampling request, VideoDecodeError for a video that
    cannot be decoded (then nothing of it is left on disk).
    """
    pid = parse_pid(path)
    if pid is None:
        raise ValueError(f"{path}: file name is not <pid>.mp4 with an integer pid")
    if (num_frames is None) == (fps is None):
        raise ValueError("give exactly one of num_frames and fps")
    if (num_frames is not None and num_frames < 1) or (fps is not None and fps <= 0):
        raise ValueError(f"num_frames must be >= 1 and fps > 0, got {num_frames}, {fps}")
    cover, frames = BACKENDS[resolve_backend(backend)](path, num_frames, fps)
    if cover is None or not frames:
        raise VideoDecodeError(f"{path}: no frames decoded")

    folder = shard_folder(out_root, pid)
    os.makedirs(folder, exist_ok=True)
    written = []
    try:
        for name, image in [(f"{pid}.jpg", cover)] + [(f"{pid}_{k}.jpg", f) for k, f in enumerate(frames)]:
            written.append(os.path.join(folder, name))
            image.convert("RGB").save(written[-1], format="JPEG", quality=JPEG_QUALITY)
    except OSError:
        for partial in written:  # no half-extracted video: the loader would pick mismatched frames
            if os.path.exists(partial):
                os.remove(partial)
        raise
    return len(frames)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Extract cover + frames of <pid>.mp4 videos as JPEGs.")
    parser.add_argument("--videos", required=True, help="folder holding <pid>.mp4 files")
    parser.add_argument("--out", required=True, help="image root, e.g. Dataset/Real400K/video/images")
    sampling = parser.add_mutually_exclusive_group()
    sampling.add_argument("--num-frames", type=int, help="N evenly spaced frames per video")
    sampling.add_argument("--fps", type=float, help="sample R frames per second (default 1)")
    parser.add_argument("--backend", choices=("auto", "av", "decord"), default="auto")
    add_version_argument(parser)
    args = parser.parse_args(argv)
    if args.num_frames is None and args.fps is None:
        args.fps = 1.0
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return exit_on_input_error(lambda: extract_all(args))


def extract_all(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.videos):  # a mistyped folder would otherwise "succeed" with 0 videos
        raise FileNotFoundError(errno.ENOENT, "no such folder", args.videos)
    videos = sorted(Path(args.videos).glob("*.mp4"))
    decoded = failed = skipped = frames = 0
    for path in tqdm(videos, desc="extract frames", unit="video"):
        if parse_pid(path) is None:
            tqdm.write(f"skip {path}: file name is not <pid>.mp4 with an integer pid")
            skipped += 1
            continue
        try:
            frames += extract_video(path, args.out, args.num_frames, args.fps, args.backend)
            decoded += 1
        except VideoDecodeError as error:
            tqdm.write(f"skip {error}")
            failed += 1
    print(f"extracted {frames} frames from {decoded} videos into {args.out}; "
          f"{failed} undecodable, {skipped} badly named, {len(videos)} files")
    return 0 if decoded > 0 or not videos else 1


if __name__ == "__main__":
    sys.exit(main())
