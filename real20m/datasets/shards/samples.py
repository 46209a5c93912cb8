"""One item as a WebDataset sample: its images resized and encoded, its text and a description.

Paths come from the loader's own functions (``ItemLoader.text_file``, ``video_frame_paths``,
``shard_path``), so a shard holds exactly the files the loader would read."""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass

from PIL import Image

from real20m.datasets.annotations import GOODS, safe_join
from real20m.datasets.items import (DecodedFrame, ItemLoader, ItemRoots, decode_frame, read_text_lines, shard_path,
                                    validation_scale, video_frame_paths)
from real20m.datasets.shards.plan import SOURCE_NAMES, ItemRef

REDUCTIONS = (8, 4, 2)  # the DCT reductions libjpeg can decode at, largest first


@dataclass(frozen=True)
class ImageSettings:
    short_side: int  # 0: keep each file's bytes
    quality: int


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    original_size: tuple[int, int]
    size: tuple[int, int]


def reduction_for(short_side: int):
    """callable(width, height) -> the largest DCT reduction that still leaves the short side at least
    ``short_side`` (decoding less is most of the speed); size 0 decodes only to check readability."""
    if short_side == 0:
        return validation_scale

    def scale(width: int, height: int) -> int:
        return next((factor for factor in REDUCTIONS if min(width, height) // factor >= short_side), 1)
    return scale


def resized_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """(width, height) with the short side ``short_side`` and the aspect ratio kept."""
    width, height = size
    shorter = min(width, height)
    return max(1, round(width * short_side / shorter)), max(1, round(height * short_side / shorter))


def encode_image(path: str, settings: ImageSettings) -> EncodedImage | None:
    """The image at ``path`` as it goes into a shard, or None when it is missing or unreadable."""
    frame = decode_frame(path, reduction_for(settings.short_side), keep_bytes=True)
    if frame is None:
        return None
    if settings.short_side == 0 or min(frame.original_size) <= settings.short_side:
        return EncodedImage(frame.data, frame.original_size, frame.original_size)  # never upscaled
    return _resized(frame, settings)


def _resized(frame: DecodedFrame, settings: ImageSettings) -> EncodedImage:
    target = resized_size(frame.original_size, settings.short_side)
    encoded = io.BytesIO()
    frame.image.resize(target, Image.Resampling.LANCZOS).save(encoded, format="JPEG", quality=settings.quality)
    return EncodedImage(encoded.getvalue(), frame.original_size, target)


class SampleBuilder:
    """Builds the samples of one source; problems met are appended to ``skipped`` as
    (source, pid, path relative to the data root, reason) rows."""

    def __init__(self, data_root: str, roots: ItemRoots, images: ImageSettings, source: int):
        self.data_root = data_root
        self.roots = roots
        self.loader = ItemLoader(roots, transform=None)  # for its text_file rule only
        self.images = images
        self.source = source

    def build(self, item: ItemRef, skipped: list) -> dict | None:
        """``{"__key__", "jpg", "0.jpg", ..., "json"}``; None when no image of the item is readable."""
        issues: list = []
        text_file = self.loader.text_file(item.pid, self.source, item.text_path)
        lines = read_text_lines(text_file, issues)
        skipped.extend(self._row(item.pid, path, reason) for reason, path in issues)
        cover, frames = self._image_files(item)
        members, stored = self._encode(item.pid, cover, frames, skipped)
        if not members:
            skipped.append(self._row(item.pid, cover, "no_readable_image"))
            return None
        description = {
            "pid": item.pid, "source": SOURCE_NAMES[self.source], "text": lines,
            "text_file": self._relative(text_file),
            "image": self._relative(cover) if "jpg" in members else None,
            "frames": [self._relative(path) for path in stored],
            "listed_frames": [self._relative(path) for path in frames],
            "original_sizes": {name: list(image.original_size) for name, image in members.items()},
            "sizes": {name: list(image.size) for name, image in members.items()},
        }
        described = json.dumps(description, ensure_ascii=False, sort_keys=True).encode()
        sample = {"__key__": str(item.pid), "json": described}
        sample.update((name, image.data) for name, image in members.items())
        return sample

    def _image_files(self, item: ItemRef) -> tuple[str, list[str]]:
        """(the ``jpg`` member's file, the video's listed frames); a goods item has no frames and
        takes its first listed image, as the loader does."""
        root = self.roots.image_root(self.source)
        if self.source == GOODS:
            image = safe_join(root, item.frame_paths[0]) if item.frame_paths else shard_path(root, item.pid, "jpg")
            return image, []
        explicit = list(item.frame_paths) if item.frame_paths else None
        return shard_path(root, item.pid, "jpg"), video_frame_paths(item.pid, root, self.roots.frameid_root, explicit)

    def _encode(self, pid: int, cover: str, frames: list[str], skipped: list) -> tuple[dict, list[str]]:
        """Member name -> EncodedImage, and the frames stored as ``0.jpg``, ``1.jpg``, ... in order."""
        members, stored = {}, []
        image = self._encoded(pid, cover, "image", skipped)
        if image is not None:
            members["jpg"] = image
        for path in frames:
            image = self._encoded(pid, path, "frame", skipped)
            if image is not None:
                members[f"{len(stored)}.jpg"] = image
                stored.append(path)
        return members, stored

    def _encoded(self, pid: int, path: str, kind: str, skipped: list) -> EncodedImage | None:
        image = encode_image(path, self.images)
        if image is None:
            problem = "corrupt" if os.path.exists(path) else "missing"
            skipped.append(self._row(pid, path, f"{problem}_{kind}"))
        return image

    def _row(self, pid: int, path: str, reason: str) -> tuple[str, int, str, str]:
        return SOURCE_NAMES[self.source], pid, self._relative(path), reason

    def _relative(self, path: str) -> str:
        return os.path.relpath(path, self.data_root)
