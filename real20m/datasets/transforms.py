"""Image transforms: PIL RGB image -> uint8 Tensor(3, image_size, image_size) of raw 0-255 pixels.

The loader hands the model uint8 pixels and the model normalises them on its own device
(``QCDModel.normalize_pixels``: /255, ImageNet mean and std). Loader workers share
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


class TrainTransform:
    """RandomResizedCrop + RandomHorizontalFlip -> uint8 pixels, drawing from ``generator``."""

    def __init__(self, image_size: int, scale=TRAIN_SCALE, ratio=TRAIN_RATIO):
        self.image_size = image_size
        self.scale = scale
        self.ratio = ratio
        # The float32 values torchvision draws the log aspect ratio between, computed once.
        self.log_ratio = tuple(torch.log(torch.tensor(ratio)).tolist())

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        top, left, height, width = self.crop_box(image.width, image.height, generator)
        # crop + resize, as torchvision's resized_crop on a PIL image: PIL's resize(box=...) would
        # also read the pixels just outside the box and so change the samples' edges.
        image = image.crop((left, top, left + width, top + height))
        image = image.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        if torch.rand(1, generator=generator).item() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return pil_to_uint8(image)

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


def build_train_transform(image_size: int) -> TrainTransform:
    return TrainTransform(image_size)


def build_eval_transform(image_size: int, compat: str = DEFAULT) -> T.Compose:
    if check_compat(compat) == DEFAULT:
        resize = T.Resize(image_size, interpolation=InterpolationMode.BICUBIC, antialias=True)
    else:
        # On a PIL image this is image.resize((S, S), Image.BILINEAR): PIL's filter, whose support
        # widens when downscaling (antialiasing), exactly as the original called it.
        resize = T.Resize((image_size, image_size), interpolation=InterpolationMode.BILINEAR)
    return T.Compose([resize, T.CenterCrop(image_size), pil_to_uint8])
