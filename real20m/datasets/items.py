"""Loading one item (a goods product or a micro-video) from the Real400K / Real20M layout.

Text: goods use the title (line 5 of 6); videos join title, text[:40] and caption with ``|`` and
cut at 80 characters; a field that is the word ``null`` is missing and left out of the join.
Frames: a video is ``clip_length`` frames, one per equal segment of its available frames
(random inside the segment for training, the middle one for evaluation); goods are one image.

``compat="original"`` (evaluation only) rebuilds the original release's inputs instead: its text
rules, its frame choice and its handling of unreadable frames (see ``original_compat``).

Data problems never crash a worker: they are repaired and reported as ``(kind, path)`` issues:
``missing_text`` / ``non_utf8`` (text file), ``corrupt_image`` (frame replaced by a readable
neighbour, or skipped in original mode), and the caller replaces items whose frames are all
unreadable (``replaced_item``).

Decoding: by default (``ItemLoader(reduced_decode=True)``) a JPEG frame is decoded in the DCT
domain at the largest reduction (1/2, 1/4, 1/8) its transform allows (``transform.decode_scale``)
and the transform maps its boxes, drawn in original coordinates, onto the reduced image
(``transform.reduced``): same frames, same boxes, same random stream; the pixels differ only by
the decoder's scaling. ``reduced_decode=False`` and ``compat="original"`` decode at full size.
``ItemLoader(jpeg_bytes=True)`` sends each frame's file bytes and plan instead of pixels, for
``transforms.DeviceJpegDecoder`` to decode the batch on the GPU.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from . import original_compat
from .annotations import GOODS, PHOTO, SOURCES, safe_join
from .original_compat import DEFAULT, ORIGINAL, check_compat

SHARD = 50000  # files live under <root>/<pid % 50000>/
MAX_TEXT_CHARS = 80
VIDEO_BODY_CHARS = 40
MISSING_FIELD = "null"
FIELD_DROP_PROB = 0.2
PERTURB_PROB = 0.5
CHAR_EDIT_PROB = 0.05


def shard_path(root: str, pid: int, ext: str) -> str:
    return os.path.join(root, str(pid % SHARD), f"{pid}.{ext}")


# --------------------------------------------------------------------------- text


def in_language(path: str, text_ending: str) -> str:
    """The file of text ``path`` (``<name>.txt``) in the language whose files end in ``text_ending``
    (``<name>_eng.txt``); a path with another ending is kept as given, since only ``.txt`` files have
    translations beside them."""
    return path.removesuffix(".txt") + text_ending if path.endswith(".txt") else path


def read_text(path: str, issues: list) -> str:
    """Content of a text file; a missing file gives '' and a non-UTF-8 one is decoded with replacement."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError:
        issues.append(("missing_text", path))
        return ""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        issues.append(("non_utf8", path))
        return raw.decode("utf-8", errors="replace")


def read_text_lines(path: str, issues: list) -> list[str]:
    """Lines of a text file without their newlines.

    Split at newlines only: ``str.splitlines`` would also split a title at a form feed, U+0085
    or U+2028, shifting every later line (a goods file would then give its description)."""
    return [line.rstrip("\n") for line in original_compat.text_mode_lines(read_text(path, issues))]


def _field(lines: list[str], index: int) -> str:
    value = lines[index].strip() if index < len(lines) else ""
    return "" if value == MISSING_FIELD else value


def goods_text(lines: list[str], rng: np.random.Generator | None = None) -> str:
    """Title of a goods text file (itemid, category, brand, entity, title, description)."""
    title = _field(lines, 4)
    return perturb_title(title, rng) if rng is not None else title


def goods_category(lines: list[str]) -> str:
    """Category line of a goods text file ("" when missing or the word null)."""
    return _field(lines, 1)


def video_text(lines: list[str], rng: np.random.Generator | None = None) -> str:
    """``title|text[:40]|caption`` of a video text file (caption, title, text), cut at 80 characters.

    With ``rng`` (training) each present field is dropped with probability 0.2 (one always stays)
    and the title is perturbed."""
    caption, title, body = _field(lines, 0), _field(lines, 1), _field(lines, 2)[:VIDEO_BODY_CHARS]
    if rng is not None:
        title = perturb_title(title, rng)
    fields = [value for value in (title, body, caption) if value]
    if rng is not None and len(fields) > 1:
        kept = [value for value in fields if rng.random() >= FIELD_DROP_PROB]
        fields = kept or [fields[rng.integers(len(fields))]]
    return "|".join(fields)[:MAX_TEXT_CHARS]


def perturb_title(title: str, rng: np.random.Generator) -> str:
    """With probability 0.5, delete or duplicate each character with probability 0.05 (typo noise)."""
    if not title or rng.random() >= PERTURB_PROB:
        return title
    edits = rng.random(len(title))
    pieces = []
    for char, edit in zip(title, edits):
        if edit < CHAR_EDIT_PROB:
            continue  # deletion
        pieces.append(char * 2 if edit < 2 * CHAR_EDIT_PROB else char)
    return "".join(pieces) or title


def item_text(path: str, source: int, issues: list, rng: np.random.Generator | None = None,
              compat: str = DEFAULT) -> str:
    """The item's text; ``compat="original"`` applies the original's rules (with ``rng``: its
    training augmentation)."""
    if compat == ORIGINAL:
        lines = original_compat.text_mode_lines(read_text(path, issues))
        if rng is not None:
            return original_compat.training_goods_title(lines, rng) if source == GOODS else \
                original_compat.training_video_title(lines, rng)
        return original_compat.goods_title(lines) if source == GOODS else original_compat.video_title(lines)
    lines = read_text_lines(path, issues)
    return goods_text(lines, rng) if source == GOODS else video_text(lines, rng)


# --------------------------------------------------------------------------- frames


def segment_frame_indices(num_frames: int, clip_length: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """One frame index per equal segment: random in the segment with ``rng``, else its middle.

    With fewer frames than ``clip_length`` segments are narrower than a frame and indices repeat."""
    if num_frames < 1:
        raise ValueError("a video needs at least one frame")
    bounds = np.arange(clip_length + 1) * num_frames // clip_length
    starts = np.minimum(bounds[:-1], num_frames - 1)
    ends = np.maximum(bounds[1:], starts + 1)
    if rng is None:
        return starts + (ends - starts) // 2
    return rng.integers(starts, ends)


def video_frame_paths(pid: int, image_root: str, frameid_root: str | None = None,
                      explicit: list[str] | None = None) -> list[str]:
    """Available frames of a video, in order.

    Explicit paths (item file) win; then the frame list ``<frameid_root>/<pid%50000>/<pid>.txt``;
    then ``<pid>_<k>.jpg`` for k = 0, 1, ... until one is missing; then the cover ``<pid>.jpg``."""
    if explicit:
        return [safe_join(image_root, relative) for relative in explicit]
    if frameid_root:
        list_file = shard_path(frameid_root, pid, "txt")
        if os.path.exists(list_file):
            with open(list_file, encoding="utf-8") as handle:
                listed = [p.strip() for p in handle.readline().strip().split(",") if p.strip()]
            if listed:
                return [safe_join(image_root, relative) for relative in listed]
    folder = os.path.join(image_root, str(pid % SHARD))
    frames = []
    while os.path.exists(candidate := os.path.join(folder, f"{pid}_{len(frames)}.jpg")):
        frames.append(candidate)
    return frames or [shard_path(image_root, pid, "jpg")]


@dataclass
class DecodedFrame:
    """A frame decoded at 1/``scale`` of its ``original_size`` (width, height); ``data`` holds the
    file's JPEG bytes when they were asked for."""

    image: Image.Image
    original_size: tuple[int, int]
    scale: int = 1
    data: bytes | None = None


def decode_frame(path: str, scale_for=None, keep_bytes: bool = False) -> DecodedFrame | None:
    """The RGB frame, or None when the file is missing, empty or not decodable.

    ``scale_for(width, height)`` -> 1, 2, 4 or 8: a JPEG is then decoded at that reduction in the
    DCT domain (``Image.draft``); other formats decode at full size. ``keep_bytes``: the frame
    also keeps the file's bytes (re-encoded as JPEG, quality 95, when the file is another format)."""
    try:
        data = None
        if keep_bytes:
            with open(path, "rb") as handle:
                data = handle.read()
        with Image.open(io.BytesIO(data) if keep_bytes else path) as image:
            original_size = image.size
            scale = scale_for(*original_size) if scale_for is not None else 1
            if scale > 1:
                drafted = image.draft("RGB", (original_size[0] // scale, original_size[1] // scale))
                # the reduction libjpeg will apply (none for a format without draft support)
                scale = 1 if drafted is None else int(round(original_size[0] / drafted[1][2]))
            image.load()  # decodes now and closes the file; an RGB JPEG then needs no converted copy
            is_jpeg = image.format == "JPEG"
            rgb = image if image.mode == "RGB" else image.convert("RGB")
        if keep_bytes and not is_jpeg:
            encoded = io.BytesIO()
            rgb.save(encoded, format="JPEG", quality=95)
            data = encoded.getvalue()
        return DecodedFrame(rgb, original_size, scale, data)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def validation_scale(width: int, height: int) -> int:
    """Byte mode decodes a frame only to check that it is readable: at the smallest size."""
    return 8


class FrameFiles:
    """The listed frame files of one item, each decoded at most once (clips repeat indices).

    ``scale_for`` / ``keep_bytes``: see ``decode_frame`` (default: full size, no bytes).
    A file that cannot be decoded is reported once as ``("corrupt_image", path)``."""

    def __init__(self, paths: list[str], issues: list, scale_for=None, keep_bytes: bool = False):
        self.paths = paths
        self.issues = issues
        self.scale_for = scale_for
        self.keep_bytes = keep_bytes
        self._frames: dict[int, DecodedFrame | None] = {}

    def frame(self, index: int) -> DecodedFrame | None:
        if index not in self._frames:
            self._frames[index] = decode_frame(self.paths[index], self.scale_for, self.keep_bytes)
            if self._frames[index] is None:
                self.issues.append(("corrupt_image", self.paths[index]))
        return self._frames[index]

    def image(self, index: int) -> Image.Image | None:
        frame = self.frame(index)
        return None if frame is None else frame.image

    def readable(self, index: int) -> bool:
        return self.frame(index) is not None


def nearest_readable(indices, readable, num_frames: int) -> list[int] | None:
    """Each index, or its nearest readable neighbour (earlier one first); None when none is readable."""
    chosen = []
    for index in map(int, indices):
        candidates = [index] + [neighbour for offset in range(1, num_frames)
                                for neighbour in (index - offset, index + offset) if 0 <= neighbour < num_frames]
        found = next((candidate for candidate in candidates if readable(candidate)), None)
        if found is None:
            return None
        chosen.append(found)
    return chosen


def choose_frames(files: FrameFiles, indices, compat: str = DEFAULT) -> list[int] | None:
    """Indices of the frames that make the clip: unreadable ones replaced by a readable neighbour,
    or (original) skipped with the clip padded by its last frame. None when no frame is readable."""
    if compat == ORIGINAL:
        return original_compat.skip_unreadable_and_pad([int(index) for index in indices], files.readable)
    return nearest_readable(indices, files.readable, len(files.paths))


# --------------------------------------------------------------------------- one item


@dataclass
class ItemRoots:
    goods_img_root: str
    goods_text_root: str
    photo_img_root: str
    photo_text_root: str
    frameid_root: str | None = None
    text_ending: str = ".txt"   # the language's text files: "_eng.txt" reads <pid>_eng.txt for <pid>.txt

    def image_root(self, source: int) -> str:
        return self.goods_img_root if source == GOODS else self.photo_img_root

    def text_root(self, source: int) -> str:
        return self.goods_text_root if source == GOODS else self.photo_text_root


@dataclass
class ItemLoader:
    """Reads and transforms one item; ``load`` returns None when none of its frames is readable.

    ``compat="original"`` reproduces the original release's evaluation inputs (text rules, frame
    choice, skipped unreadable frames) for deterministic loads; a load with training randomness
    (``rng``) keeps our rules, since only the original's evaluation is reproduced. The matching
    pixels come from ``build_eval_transform(size, "original")``, which the caller passes.

    ``reduced_decode`` (default on): decode JPEG frames at the reduction the transform allows
    (see the module notes); off, or under ``compat="original"``, or with a transform that has no
    ``decode_scale``, frames are decoded at full size (today's pixels, bit for bit).
    ``jpeg_bytes`` (default off): samples carry ``"jpeg"`` (list of 1-D uint8 tensors, the frame
    files' bytes) and ``"plans"`` (int64 (T, 5): top, left, height, width, flip in original
    coordinates, from the same generator draws) instead of ``"frames"``; the main process turns
    them into pixels with ``transforms.DeviceJpegDecoder``."""

    roots: ItemRoots
    transform: object  # callable(image, generator=None) -> uint8 Tensor(3, H, W)
    clip_length: int = 5
    text_aug: bool = False
    compat: str = DEFAULT
    reduced_decode: bool = True
    jpeg_bytes: bool = False
    train_text: str = DEFAULT  # "original": the original's training text augmentation

    def __post_init__(self):
        check_compat(self.compat)
        check_compat(self.train_text)
        if self.jpeg_bytes and not hasattr(self.transform, "plan"):
            raise ValueError("jpeg_bytes needs a transform with a plan() (TrainTransform or EvalTransform); "
                             "compat='original' has none")

    def load(self, pid: int, source: int, rng: np.random.Generator | None = None,
             generator: torch.Generator | None = None, frame_paths: list[str] | None = None,
             text_path: str | None = None, issues: list | None = None) -> dict | None:
        """Sample dict ``{"pid","source","title","frames","issues"}``; ``rng`` set = training randomness.

        Problems met are appended to ``issues`` (a fresh list when not given), which becomes the
        sample's ``"issues"``; the caller's list keeps them even when None is returned."""
        issues = [] if issues is None else issues
        title = item_text(self.text_file(pid, source, text_path), source, issues,
                          rng if self.text_aug else None, self._text_rules(rng))
        clip = self._decoded_clip(pid, source, rng, frame_paths, issues, self._scale_for())
        if clip is None:
            return None
        sample = {"pid": int(pid), "source": SOURCES[source], "title": title, "issues": issues}
        if self.jpeg_bytes:
            sample.update(self._jpeg_sample(clip, generator))
        elif hasattr(self.transform, "clip"):  # a transform that treats the clip as a whole
            sample["frames"] = self.transform.clip([frame.image for frame in clip], generator)
        else:
            sample["frames"] = torch.stack([self._transform(frame, generator) for frame in clip])
        return sample

    def load_with_blank_frames(self, pid: int, source: int, text_path: str | None = None,
                               issues: list | None = None) -> dict:
        """Deterministic sample whose frames are black images (evaluation of an unreadable item)."""
        issues = [] if issues is None else issues
        # text issues were already counted by the load that found no frame
        title = item_text(self.text_file(pid, source, text_path), source, [], compat=self.compat)
        black = Image.new("RGB", (32, 32))  # any size: the transform resizes it to image_size
        sample = {"pid": int(pid), "source": SOURCES[source], "title": title, "issues": issues}
        if self.jpeg_bytes:
            encoded = io.BytesIO()
            black.save(encoded, format="JPEG", quality=95)
            frame = DecodedFrame(black, black.size, 1, encoded.getvalue())
            sample.update(self._jpeg_sample([frame] * self._frames_per_clip(source), None))
            return sample
        sample["frames"] = self.transform(black).unsqueeze(0).repeat(self._frames_per_clip(source), 1, 1, 1)
        return sample

    def text_file(self, pid: int, source: int, text_path: str | None = None) -> str:
        """Explicit text path (relative to the source's text root) or ``<text_root>/<pid%50000>/<pid>.txt``,
        in the language of ``roots.text_ending``."""
        root = self.roots.text_root(source)
        path = safe_join(root, text_path) if text_path else shard_path(root, pid, "txt")
        return in_language(path, self.roots.text_ending)

    def clip_frames(self, pid: int, source: int, rng: np.random.Generator | None = None,
                    frame_paths: list[str] | None = None,
                    issues: list | None = None) -> list[tuple[str, Image.Image]] | None:
        """(path, full-size RGB image) of each frame of the item's clip, in order; None when none is readable."""
        issues = [] if issues is None else issues
        rules = self._rules(rng)
        files = FrameFiles(self._listed_frames(pid, source, frame_paths, rules), issues)
        chosen = choose_frames(files, self._frame_indices(len(files.paths), source, rng, rules), rules)
        return None if chosen is None else [(files.paths[index], files.image(index)) for index in chosen]

    def _decoded_clip(self, pid: int, source: int, rng, frame_paths, issues: list,
                      scale_for) -> list[DecodedFrame] | None:
        """The clip's frames as ``clip_frames`` chooses them, decoded as ``scale_for`` says.

        Which frames are readable does not depend on the scale: a reduced decode reads and
        checks the whole entropy-coded stream as a full one does."""
        rules = self._rules(rng)
        files = FrameFiles(self._listed_frames(pid, source, frame_paths, rules), issues, scale_for,
                           keep_bytes=self.jpeg_bytes)
        chosen = choose_frames(files, self._frame_indices(len(files.paths), source, rng, rules), rules)
        return None if chosen is None else [files.frame(index) for index in chosen]

    def _scale_for(self):
        """callable(width, height) -> reduction for the decoder, or None (full size)."""
        if self.jpeg_bytes:
            return validation_scale
        if self.reduced_decode and self.compat == DEFAULT and hasattr(self.transform, "decode_scale"):
            return self.transform.decode_scale
        return None

    def _jpeg_sample(self, clip: list[DecodedFrame], generator) -> dict:
        plans = [self.transform.plan(*frame.original_size, generator) for frame in clip]
        return {"jpeg": [torch.frombuffer(bytearray(frame.data), dtype=torch.uint8) for frame in clip],
                "plans": torch.tensor(plans, dtype=torch.int64)}

    def _rules(self, rng) -> str:
        return self.compat if rng is None else DEFAULT

    def _text_rules(self, rng) -> str:
        return self.compat if rng is None else self.train_text

    def _frames_per_clip(self, source: int) -> int:
        return self.clip_length if source == PHOTO else 1

    def _listed_frames(self, pid: int, source: int, frame_paths: list[str] | None, rules: str) -> list[str]:
        image_root = self.roots.image_root(source)
        if source == PHOTO:
            return video_frame_paths(pid, image_root, self.roots.frameid_root, frame_paths)
        if not frame_paths:
            return [shard_path(image_root, pid, "jpg")]
        # We use a goods item's first listed image; the original picks the middle one of all listed.
        listed = frame_paths if rules == ORIGINAL else frame_paths[:1]
        return [safe_join(image_root, relative) for relative in listed]

    def _frame_indices(self, num_frames: int, source: int, rng, rules: str):
        if rules == ORIGINAL:
            return original_compat.frame_indices(num_frames, self._frames_per_clip(source))
        if source == PHOTO:
            return segment_frame_indices(num_frames, self.clip_length, rng)
        return [0]

    def _transform(self, frame: DecodedFrame, generator):
        if frame.scale > 1:
            return self.transform.reduced(frame.image, frame.original_size, frame.scale, generator)
        return self.transform(frame.image, generator) if generator is not None else self.transform(frame.image)
