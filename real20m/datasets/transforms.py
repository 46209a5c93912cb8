"""Image transforms: PIL RGB image -> normalised FloatTensor(3, image_size, image_size).

Training: RandomResizedCrop(scale=(0.64, 1.0)) + RandomHorizontalFlip + ToTensor + Normalize.
Its randomness comes from the ``torch.Generator`` passed with each image (the train dataset seeds
one per sample from the sampler's key, so a sample is reproducible whatever the worker count);
without one it falls back to torch's global RNG, which DataLoader seeds per worker.

Evaluation: Resize(image_size, bicubic) + CenterCrop + Normalize. ``compat="original"``
reproduces the original release: resize to (image_size, image_size) with NEAREST interpolation,
then CenterCrop + Normalize.
"""
from __future__ import annotations

import math

import torch
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRAIN_SCALE = (0.64, 1.0)
TRAIN_RATIO = (3 / 4, 4 / 3)


class TrainTransform:
    """RandomResizedCrop + RandomHorizontalFlip + ToTensor + Normalize, drawing from ``generator``."""

    def __init__(self, image_size: int, scale=TRAIN_SCALE, ratio=TRAIN_RATIO):
        self.image_size = image_size
        self.scale = scale
        self.ratio = ratio
        self.normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)

    def __call__(self, image, generator: torch.Generator | None = None) -> torch.Tensor:
        top, left, height, width = self.crop_box(image.width, image.height, generator)
        image = F.resized_crop(image, top, left, height, width, [self.image_size, self.image_size],
                               interpolation=InterpolationMode.BILINEAR, antialias=True)
        if torch.rand(1, generator=generator).item() < 0.5:
            image = F.hflip(image)
        return self.normalize(F.to_tensor(image))

    def crop_box(self, image_width: int, image_height: int, generator=None) -> tuple[int, int, int, int]:
        """(top, left, height, width) as torchvision's RandomResizedCrop.get_params, but seedable."""
        area = image_width * image_height
        log_ratio = torch.log(torch.tensor(self.ratio))
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(*self.scale, generator=generator).item()
            aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
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


def build_eval_transform(image_size: int, compat: str = "default") -> T.Compose:
    if compat == "default":
        resize = T.Resize(image_size, interpolation=InterpolationMode.BICUBIC, antialias=True)
    elif compat == "original":
        resize = T.Resize((image_size, image_size), interpolation=InterpolationMode.NEAREST)
    else:
        raise ValueError(f"compat must be 'default' or 'original', got {compat!r}")
    return T.Compose([resize, T.CenterCrop(image_size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
