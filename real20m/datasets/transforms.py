"""Image transforms: PIL RGB image -> uint8 Tensor(3, image_size, image_size) of raw 0-255 pixels.

The loader hands the model uint8 pixels and the model normalises them on its own device
(``QCDModel.normalize_pixels``: /255, the backbone's mean and std). Loader workers share
the CPU with the training step, so they only do what needs the image itself (decode, crop,
resize, flip), and a batch crosses process boundaries (and the host-to-GPU copy) at a quarter of
the float32 size.

Training: RandomResizedCrop(scale=(0.64, 1.0)) + RandomHorizontalFlip, done directly in PIL with
the same crop box and the same bilinear resampling as torchvision's functional ops. Its randomness
comes from the ``torch.Generator`` passed with each image (the train dataset seeds one per sample
from the sampler's key, so a sample is reproducible whatever the worker count); without one it
falls back to torch's global RNG, which DataLoader seeds per worker.

Evaluation: Resize(image_size, bicubic) + CenterCrop. ``compat="original"`` reproduces the
original release: a resize to exactly (image_size, image_size) with PIL's BILINEAR filter, ignoring
the aspect ratio, then CenterCrop (a no-op after that). The original's video transform inverts
the interpolation names for PIL images and its Resize defaults to 'nearest', so 'nearest' there
means BILINEAR. The model's ``normalize_pixels`` then gives the original's float32 pixels.

Reduced-scale decoding: both default transforms say, from a frame's size alone, how far its JPEG
may be shrunk in the DCT domain (``decode_scale``: 1, 2, 4 or 8) so that every crop they can draw
still has at least ``image_size`` source pixels in each dimension, and ``reduced`` applies the
very same geometry (boxes in original coordinates, from the same generator draws) to an image
decoded at that scale. Only the decoder's scaling changes the pixels. The original-compat transform
has no ``decode_scale``: it always gets full-size images.

``DeviceJpegDecoder`` is the optional GPU path: the loader sends each frame's JPEG bytes and plan
(``TrainTransform.plan`` / ``EvalTransform.plan``), the main process decodes the batch with
``torchvision.io.decode_jpeg(..., device=...)`` and crops/resizes there.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from .original_compat import DEFAULT, check_compat

TRAIN_SCALE = (0.64, 1.0)
TRAIN_RATIO = (3 / 4, 4 / 3)


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """(3, H, W) uint8 tensor of an RGB image's pixels (np.array copies them: the tensor is writable)."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


DRAFT_SCALES = (8, 4, 2)  # the DCT-domain reductions libjpeg offers (1/8, 1/4, 1/2), largest first


def largest_draft_scale(min_width: float, min_height: float, image_size: int) -> int:
    """The largest reduction s with ``min_width / s`` and ``min_height / s`` both >= ``image_size``
    (never upsample because of the draft); 1 when none fits."""
    for scale in DRAFT_SCALES:
        if min_width >= image_size * scale and min_height >= image_size * scale:
            return scale
    return 1


class TrainTransform:
    """RandomResizedCrop + RandomHorizontalFlip -> uint8 pixels, drawing from ``generator``."""

    def __init__(self, image_size: int, scale=TRAIN_SCALE, ratio=TRAIN_RATIO):
        self.image_size = image_size
        self.scale = scale
        self.ratio = ratio
        # The float32 values torchvision draws the log aspect ratio between, computed once.
        self.log_ratio = tuple(torch.log(torch.tensor(ratio)).tolist())

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        top, left, height, width, flip = self.plan(image.width, image.height, generator)
        # crop + resize, as torchvision's resized_crop on a PIL image: PIL's resize(box=...) would
        # also read the pixels just outside the box and so change the samples' edges.
        image = image.crop((left, top, left + width, top + height))
        image = image.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return pil_to_uint8(image)

    def plan(self, image_width: int, image_height: int, generator=None) -> tuple[int, int, int, int, int]:
        """(top, left, height, width, flip) of one frame, in original coordinates: the crop box and
        then the flip draw, in the order ``__call__`` makes them."""
        box = self.crop_box(image_width, image_height, generator)
        return (*box, int(torch.rand(1, generator=generator).item() < 0.5))

    def reduced(self, image: Image.Image, original_size: tuple[int, int], scale: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``__call__`` of the original-size image, given ``image`` decoded at 1/``scale`` of it.

        The box is drawn in original coordinates (same draws, same geometry) and mapped to the
        reduced image: its pixel i covers original pixels [i*scale, (i+1)*scale)."""
        if scale == 1:
            return self(image, generator)
        top, left, height, width, flip = self.plan(*original_size, generator)
        box = (left / scale, top / scale, (left + width) / scale, (top + height) / scale)
        image = image.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR, box=box)
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return pil_to_uint8(image)

    def min_crop_size(self, image_width: int, image_height: int) -> tuple[float, float]:
        """Lower bounds of the width and height of any box ``crop_box`` can return (a pixel of
        slack covers the rounding and the float32 draws)."""
        smallest_area = image_width * image_height * min(self.scale)
        fallback = _central_crop_box(image_width, image_height, self.ratio)
        width = min(image_width, fallback[3], math.sqrt(smallest_area * min(self.ratio)) - 1)
        height = min(image_height, fallback[2], math.sqrt(smallest_area / max(self.ratio)) - 1)
        return width, height

    def decode_scale(self, image_width: int, image_height: int) -> int:
        """How far a frame of this size may be shrunk at decoding (1, 2, 4 or 8)."""
        return largest_draft_scale(*self.min_crop_size(image_width, image_height), self.image_size)

    def crop_box(self, image_width: int, image_height: int, generator=None) -> tuple[int, int, int, int]:
        """(top, left, height, width) as torchvision's RandomResizedCrop.get_params, but seedable."""
        area = image_width * image_height
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(*self.scale, generator=generator).item()
            aspect = math.exp(torch.empty(1).uniform_(*self.log_ratio, generator=generator).item())
            width = int(round(math.sqrt(target_area * aspect)))
            height = int(round(math.sqrt(target_area / aspect)))
            if 0 < width <= image_width and 0 < height <= image_height:
                top = int(torch.randint(0, image_height - height + 1, (1,), generator=generator))
                left = int(torch.randint(0, image_width - width + 1, (1,), generator=generator))
                return top, left, height, width
        return _central_crop_box(image_width, image_height, self.ratio)

    def __repr__(self) -> str:
        return f"TrainTransform(image_size={self.image_size}, scale={self.scale}, ratio={self.ratio})"


def _central_crop_box(image_width: int, image_height: int, ratio) -> tuple[int, int, int, int]:
    """Fallback of RandomResizedCrop: the largest central crop with an allowed aspect ratio."""
    in_ratio = image_width / image_height
    if in_ratio < min(ratio):
        width, height = image_width, int(round(image_width / min(ratio)))
    elif in_ratio > max(ratio):
        width, height = int(round(image_height * max(ratio))), image_height
    else:
        width, height = image_width, image_height
    return (image_height - height) // 2, (image_width - width) // 2, height, width


class EvalTransform:
    """Resize(image_size, bicubic) of the shorter side + CenterCrop -> uint8 pixels (torchvision's
    ops on a PIL image), with the reduced-scale variant of the same geometry."""

    def __init__(self, image_size: int):
        self.image_size = image_size
        self.full = T.Compose([T.Resize(image_size, interpolation=InterpolationMode.BICUBIC, antialias=True),
                               T.CenterCrop(image_size), pil_to_uint8])

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.full(image)

    def resized_size(self, image_width: int, image_height: int) -> tuple[int, int]:
        """(width, height) torchvision's Resize(image_size) gives: shorter side S, longer int(S*long/short)."""
        size = self.image_size
        if image_width <= image_height:
            return size, int(size * image_height / image_width)
        return int(size * image_width / image_height), size

    def crop_region(self, image_width: int, image_height: int) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in original coordinates of the centre crop of the resized image."""
        resized_width, resized_height = self.resized_size(image_width, image_height)
        top = int(round((resized_height - self.image_size) / 2.0))
        left = int(round((resized_width - self.image_size) / 2.0))
        fx, fy = image_width / resized_width, image_height / resized_height
        return left * fx, top * fy, (left + self.image_size) * fx, (top + self.image_size) * fy

    def plan(self, image_width: int, image_height: int, generator=None) -> tuple[int, int, int, int, int]:
        """(top, left, height, width, flip) for ``DeviceJpegDecoder``: the whole frame, no flip
        (the decoder resizes it and takes the centre crop itself)."""
        return 0, 0, image_height, image_width, 0

    def reduced(self, image: Image.Image, original_size: tuple[int, int], scale: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``__call__`` of the original-size image, given ``image`` decoded at 1/``scale`` of it:
        one bicubic resize of the crop region mapped to the reduced image. PIL's filter reads the
        pixels around the region as a resize of the whole image would, so the geometry is the same."""
        if scale == 1:
            return self(image)
        x0, y0, x1, y1 = self.crop_region(*original_size)
        box = (x0 / scale, y0 / scale, x1 / scale, y1 / scale)
        return pil_to_uint8(image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC, box=box))

    def decode_scale(self, image_width: int, image_height: int) -> int:
        side = min(image_width, image_height)
        return largest_draft_scale(side, side, self.image_size)

    def __repr__(self) -> str:
        return f"EvalTransform(image_size={self.image_size})"


class OriginalTrainTransform:
    """The original's training images: each frame squashed to S x S with PIL NEAREST (the crop of
    its RandomResizedCrop is computed and discarded, so it is not drawn here), and one horizontal
    flip decision per clip. Frames are decoded at full size (no ``decode_scale``)."""

    def __init__(self, image_size: int):
        self.image_size = image_size

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.clip([image], generator)[0]

    def clip(self, images: list[Image.Image], generator: torch.Generator | None = None) -> torch.Tensor:
        """(T, 3, S, S) uint8 of a clip's frames, flipped together or not at all."""
        flip = torch.rand(1, generator=generator).item() < 0.5
        frames = []
        for image in images:
            image = image.resize((self.image_size, self.image_size), Image.Resampling.NEAREST)
            if flip:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            frames.append(pil_to_uint8(image))
        return torch.stack(frames)

    def __repr__(self) -> str:
        return f"OriginalTrainTransform(image_size={self.image_size})"


def build_train_transform(image_size: int, mode: str = DEFAULT):
    """``TrainTransform`` (RandomResizedCrop + flip), or ``mode="original"``: the release's."""
    return TrainTransform(image_size) if check_compat(mode) == DEFAULT else OriginalTrainTransform(image_size)


def build_eval_transform(image_size: int, compat: str = DEFAULT):
    """``EvalTransform`` (default), or the original's transform (a torchvision Compose, which has
    no ``decode_scale``: its frames are always decoded at full size)."""
    if check_compat(compat) == DEFAULT:
        return EvalTransform(image_size)
    # On a PIL image this is image.resize((S, S), Image.BILINEAR): PIL's filter, whose support
    # widens when downscaling (antialiasing), exactly as the original called it.
    resize = T.Resize((image_size, image_size), interpolation=InterpolationMode.BILINEAR)
    return T.Compose([resize, T.CenterCrop(image_size), pil_to_uint8])


# --------------------------------------------------------------------------- decoding on the device


class DeviceJpegDecoder:
    """Decodes a batch's JPEG bytes on ``device`` and applies each frame's plan there.

    ``__call__(jpegs, plans)``: per sample a list of 1-D uint8 tensors (the files' bytes) and an
    int64 (T_i, 5) tensor of (top, left, height, width, flip) in original coordinates, as the
    loader's byte mode yields them. Returns the (B, T, 3, S, S) uint8 tensor on ``device``
    (T = max T_i; a one-frame item is repeated, as ``stack_frames`` does).

    ``train=True``: crop the box, bilinear antialiased resize to S x S, flip: the training transform's
    geometry. ``train=False``: bicubic antialiased resize of the shorter side to S and the centre
    crop, as ``EvalTransform``. Torch's antialiased filters are close to PIL's, not bit-equal.
    Works on any device (the tests run it on the CPU); with ``device="cuda"`` decode_jpeg uses nvjpeg."""

    def __init__(self, image_size: int, train: bool = True, device="cuda"):
        self.image_size = image_size
        self.train = train
        self.device = torch.device(device)
        self._eval_geometry = EvalTransform(image_size)

    def __call__(self, jpegs: list[list[torch.Tensor]], plans: list[torch.Tensor]) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg

        flat = [data for sample in jpegs for data in sample]
        device = "cuda" if self.device.type == "cuda" else "cpu"
        images = decode_jpeg(flat, mode=ImageReadMode.RGB, device=device)
        images = [image.to(self.device) for image in images]
        rows = [plan.tolist() for sample in plans for plan in sample]
        frames = torch.stack([self._frame(image, row) for image, row in zip(images, rows)])
        length = max(len(sample) for sample in jpegs)
        clips, start = [], 0
        for sample in jpegs:
            clip = frames[start:start + len(sample)]
            start += len(sample)
            if len(sample) not in (1, length):
                raise ValueError(f"cannot batch clips of {len(sample)} and {length} frames")
            clips.append(clip.expand(length, *clip.shape[1:]))
        return torch.stack(clips)

    def _frame(self, image: torch.Tensor, plan) -> torch.Tensor:
        top, left, height, width, flip = plan
        size = self.image_size
        if self.train:
            crop = image[:, top:top + height, left:left + width]
            out = _resize(crop, (size, size), "bilinear")
            return out.flip(-1) if flip else out
        resized_width, resized_height = self._eval_geometry.resized_size(image.shape[2], image.shape[1])
        out = _resize(image, (resized_height, resized_width), "bicubic")
        top = int(round((resized_height - size) / 2.0))
        left = int(round((resized_width - size) / 2.0))
        return out[:, top:top + size, left:left + size]


def _resize(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, *size), antialiased, rounded and clamped like PIL."""
    out = torch.nn.functional.interpolate(image.unsqueeze(0).float(), size=size, mode=mode,
                                          align_corners=False, antialias=True)
    return out.squeeze(0).round_().clamp_(0, 255).to(torch.uint8)
