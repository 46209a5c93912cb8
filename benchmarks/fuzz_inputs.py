"""Fuzzed bytes through the evaluation item loader and checkpoint loading: every input must be read,
or counted as a data issue, or refused with one line (CheckpointError); never a traceback, never a
hang.

    python benchmarks/fuzz_inputs.py [--images 1000] [--texts 200] [--frame_lists 100] [--checkpoints 100]

Images replace a goods item's image file (truncated, bit flips, wrong magic, empty, 0x0, huge
declared dimensions up to a decompression bomb, CMYK / grey / alpha / 16-bit / palette PNG), texts
its text file (invalid UTF-8, NULs, a 10 MB line, random bytes), frame lists are a video's listed
frames (empty, duplicated, missing, escaping the root); each goes through the evaluation dataset
(``dataset[i]``, what ``--evaluate`` runs). Checkpoints (truncated, bit-flipped, wrong keys, not a
dict) go through ``load_checkpoint``. Prints one line per traceback or hang, then one JSON object:
the outcome counts per kind, ``tracebacks`` and ``hangs``.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import signal
import struct
import sys
import tempfile
import traceback
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from real20m.config import parse_config  # noqa: E402
from real20m.datasets.annotations import UnsafePathError  # noqa: E402
from real20m.datasets.items import shard_path  # noqa: E402
from real20m.datasets.synthetic import generate  # noqa: E402
from real20m.factory import build_eval_data  # noqa: E402
from real20m.utils.checkpoint_io import CheckpointError, load_checkpoint  # noqa: E402

HANG_S = 20  # one input taking longer than this counts as a hang


class Hang(Exception):
    pass


def _alarm(*_):
    raise Hang()


# ---- images -------------------------------------------------------------------------------------

def encoded(image: Image.Image, format: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=format)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` (RGB, 8 bit) followed by a tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def base_images(rng: np.random.Generator) -> list[bytes]:
    pixels = Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8))
    return [encoded(pixels, "JPEG"), encoded(pixels, "PNG")]


def flip_bits(data: bytes, rng: np.random.Generator) -> bytes:
    buffer = bytearray(data)
    for position in rng.integers(0, len(buffer) * 8, size=rng.integers(1, 20)):
        buffer[position // 8] ^= 1 << (position % 8)
    return bytes(buffer)


def image_modes(rng: np.random.Generator) -> bytes:
    grey = Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8))
    choices = [encoded(grey.convert("CMYK"), "JPEG"), encoded(grey, "PNG"), encoded(grey.convert("LA"), "PNG"),
               encoded(grey.convert("RGBA"), "PNG"), encoded(grey.convert("P"), "PNG"),
               encoded(Image.fromarray(rng.integers(0, 65535, (32, 32), dtype=np.uint16)), "PNG"),
               encoded(grey.convert("1"), "PNG")]
    return choices[rng.integers(len(choices))]


IMAGE_MUTATIONS: dict[str, Callable[[bytes, np.random.Generator], bytes]] = {
    "truncated": lambda data, rng: data[: rng.integers(0, len(data))],
    "bit_flips": flip_bits,
    "wrong_magic": lambda data, rng: bytes(rng.integers(0, 256, 4, dtype=np.uint8)) + data[4:],
    "empty": lambda data, rng: b"",
    "zero_size": lambda data, rng: png_header_only(0, 0),
    "huge_dimensions": lambda data, rng: png_header_only(int(rng.integers(10_000, 1 << 31)),
                                                         int(rng.integers(10_000, 1 << 31))),
    "bomb": lambda data, rng: png_header_only(100_000, 100_000),
    "modes": lambda data, rng: image_modes(rng),
}


# ---- texts and frame lists ----------------------------------------------------------------------

TEXT_MUTATIONS: dict[str, Callable[[np.random.Generator], bytes]] = {
    "invalid_utf8": lambda rng: b"id\ncat\nbrand\nent\n\xff\xfe\xc3(title\n" + bytes(rng.integers(128, 256, 30,
                                                                                                 dtype=np.uint8)),
    "nuls": lambda rng: b"id\0\ncat\nbrand\nent\nti\0tle\0\n\0",
    "long_line": lambda rng: b"x" * 10_000_000,
    "random_bytes": lambda rng: bytes(rng.integers(0, 256, int(rng.integers(0, 4096)), dtype=np.uint8)),
    "empty": lambda rng: b"",
    "newlines_only": lambda rng: b"\n" * int(rng.integers(1, 50)),
}

FRAME_LIST_MUTATIONS: dict[str, Callable[[list[str], np.random.Generator], list[str]]] = {
    "empty": lambda paths, rng: [],
    "duplicate": lambda paths, rng: [paths[0]] * int(rng.integers(1, 12)),
    "missing": lambda paths, rng: [f"nowhere/{value}.jpg" for value in rng.integers(0, 10**9, 5)],
    "mixed": lambda paths, rng: list(rng.permutation(paths + ["missing.jpg", ""])),
    "escaping": lambda paths, rng: ["../../../../etc/passwd", "/etc/hostname"],
}


# ---- checkpoints --------------------------------------------------------------------------------

def base_checkpoint() -> bytes:
    out = io.BytesIO()
    torch.save({"model": {"w": torch.arange(64.0).reshape(8, 8)}, "epoch": 1, "global_step": 7}, out)
    return out.getvalue()


def saved(obj) -> bytes:
    out = io.BytesIO()
    torch.save(obj, out)
    return out.getvalue()


CHECKPOINT_MUTATIONS: dict[str, Callable[[bytes, np.random.Generator], bytes]] = {
    "truncated": lambda data, rng: data[: rng.integers(0, len(data))],
    "bit_flips": flip_bits,
    "wrong_keys": lambda data, rng: saved({"weights": torch.zeros(2), "step": "x"}),
    "not_a_dict": lambda data, rng: saved([torch.zeros(3)]),
    "random_bytes": lambda data, rng: bytes(rng.integers(0, 256, int(rng.integers(0, 2048)), dtype=np.uint8)),
}


# ---- running ------------------------------------------------------------------------------------

class Tally:
    def __init__(self):
        self.counts: dict[str, dict[str, int]] = {}
        self.tracebacks = 0
        self.hangs = 0

    def run(self, kind: str, mutation: str, call: Callable[[], str]) -> None:
        signal.alarm(HANG_S)
        try:
            outcome = call()
        except Hang:
            self.hangs += 1
            outcome = "hang"
            print(f"HANG {kind}/{mutation}", flush=True)
        except Exception:  # anything but the loader's own counting is what the fuzz run looks for
            self.tracebacks += 1
            outcome = "traceback"
            print(f"TRACEBACK {kind}/{mutation}: {traceback.format_exc().strip().splitlines()[-1]}", flush=True)
        finally:
            signal.alarm(0)
        per_kind = self.counts.setdefault(kind, {})
        per_kind[outcome] = per_kind.get(outcome, 0) + 1


def sample_outcome(sample: dict) -> str:
    """"read" when the item loaded without a data issue, else "counted" (its issues say what)."""
    return "counted" if sample["issues"] else "read"


def checkpoint_outcome(path: Path) -> str:
    try:
        load_checkpoint(path)
    except CheckpointError as error:
        assert "\n" not in str(error), "a refusal is one line"
        return "refused"
    return "read"


def eval_dataset(root: Path, data_root: str):
    cfg = parse_config(["--config", "tiny", "--data_root", data_root, "--output_dir", str(root / "out"),
                        "--image_size", "32"])
    gallery = build_eval_data(cfg.data, os.path.join(data_root, "test_file", "goods_gallery.txt"))
    queries = build_eval_data(cfg.data, os.path.join(data_root, "test_file", "video_queries.txt"))
    return gallery, queries


def fuzz(counts: dict[str, int], seed: int) -> Tally:
    rng = np.random.default_rng(seed)
    tally = Tally()
    signal.signal(signal.SIGALRM, _alarm)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        data_root = str(root / "data")
        generate(data_root, seed=0, num_queries=4, num_test_queries=2, num_val_queries=0, goods_per_query=1,
                 videos_per_query=1, frames_per_video=3, image_size=32)
        gallery, queries = eval_dataset(root, data_root)
        fuzz_items(tally, gallery, queries, counts, rng)
        fuzz_checkpoints(tally, root, counts["checkpoints"], rng)
    return tally


def item_files(dataset, index: int) -> tuple[Path, Path, list[str]]:
    """(first frame file, text file, listed frame paths) of item ``index``."""
    pid, source = int(dataset.table.pids[index]), int(dataset.table.sources[index])
    _, frame_paths, text_path = dataset.table.fields(index)
    image_root = dataset.loader.roots.image_root(source)
    first = os.path.join(image_root, frame_paths[0]) if frame_paths else shard_path(image_root, pid, "jpg")
    return Path(first), Path(dataset.loader.text_file(pid, source, text_path)), list(frame_paths or [])


def fuzz_items(tally: Tally, gallery, queries, counts: dict[str, int], rng: np.random.Generator) -> None:
    image_file, text_file, _ = item_files(gallery, 0)
    bases = base_images(rng)
    for index in range(counts["images"]):
        mutation = list(IMAGE_MUTATIONS)[index % len(IMAGE_MUTATIONS)]
        image_file.write_bytes(IMAGE_MUTATIONS[mutation](bases[index % len(bases)], rng))
        tally.run("images", mutation, lambda: sample_outcome(gallery[0]))
    for index in range(counts["texts"]):
        mutation = list(TEXT_MUTATIONS)[index % len(TEXT_MUTATIONS)]
        text_file.write_bytes(TEXT_MUTATIONS[mutation](rng))
        tally.run("texts", mutation, lambda: sample_outcome(gallery[0]))
    pid, source = int(queries.table.pids[0]), int(queries.table.sources[0])
    _, _, listed = item_files(queries, 0)
    listed = listed or ["x.jpg"]
    for index in range(counts["frame_lists"]):
        mutation = list(FRAME_LIST_MUTATIONS)[index % len(FRAME_LIST_MUTATIONS)]
        frames = FRAME_LIST_MUTATIONS[mutation](listed, rng)
        tally.run("frame_lists", mutation, lambda: frame_list_outcome(queries.loader, pid, source, frames))


def frame_list_outcome(loader, pid: int, source: int, frames: list[str]) -> str:
    try:
        sample = loader.load(pid, source, frame_paths=frames)
    except UnsafePathError:  # an annotation naming a file outside its root stops the run with one line
        return "refused"
    return "counted" if sample is None or sample["issues"] else "read"


def fuzz_checkpoints(tally: Tally, root: Path, count: int, rng: np.random.Generator) -> None:
    base = base_checkpoint()
    path = root / "fuzzed.pth.tar"
    for index in range(count):
        mutation = list(CHECKPOINT_MUTATIONS)[index % len(CHECKPOINT_MUTATIONS)]
        path.write_bytes(CHECKPOINT_MUTATIONS[mutation](base, rng))
        tally.run("checkpoints", mutation, lambda: checkpoint_outcome(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, default in (("images", 1000), ("texts", 200), ("frame_lists", 100), ("checkpoints", 100)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = {name: getattr(args, name) for name in ("images", "texts", "frame_lists", "checkpoints")}
    torch.set_num_threads(1)
    tally = fuzz(counts, args.seed)
    print(json.dumps({**tally.counts, "tracebacks": tally.tracebacks, "hangs": tally.hangs}))


if __name__ == "__main__":
    main()
