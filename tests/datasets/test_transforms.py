import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from real20m.datasets.transforms import build_eval_transform, build_train_transform


def gradient_image(width=48, height=32):
    x = np.tile(np.arange(width, dtype=np.uint8) * 5, (height, 1))
    return Image.fromarray(np.stack([x, x, 255 - x], axis=-1))


def torchvision_train_pixels(transform, image, seed):
    """The torchvision RandomResizedCrop + RandomHorizontalFlip the transform replaces, with the
    same generator draws, as uint8 pixels."""
    generator = torch.Generator().manual_seed(seed)
    top, left, height, width = transform.crop_box(image.width, image.height, generator)
    image = F.resized_crop(image, top, left, height, width, [transform.image_size] * 2,
                           interpolation=InterpolationMode.BILINEAR, antialias=True)
    if torch.rand(1, generator=generator).item() < 0.5:
        image = F.hflip(image)
    return F.pil_to_tensor(image)


def test_train_transform_gives_uint8_pixels_reproducible_from_the_seed():
    transform = build_train_transform(24)
    image = gradient_image()
    first = transform(image, torch.Generator().manual_seed(5))
    again = transform(image, torch.Generator().manual_seed(5))
    assert first.shape == (3, 24, 24) and first.dtype == torch.uint8
    assert torch.equal(first, again)
    others = [transform(image, torch.Generator().manual_seed(s)) for s in range(6)]
    assert any(not torch.equal(first, other) for other in others)
    assert transform(image).shape == (3, 24, 24)  # global RNG fallback


def test_train_transform_equals_torchvision_crop_resize_flip():
    transform = build_train_transform(24)
    image = gradient_image()
    flipped = 0
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        transform.crop_box(image.width, image.height, generator)
        flipped += torch.rand(1, generator=generator).item() < 0.5
        assert torch.equal(transform(image, torch.Generator().manual_seed(seed)),
                           torchvision_train_pixels(transform, image, seed)), seed
    assert 0 < flipped < 20  # both branches compared


def test_train_crop_box_respects_scale():
    transform = build_train_transform(24)
    for seed in range(50):
        top, left, height, width = transform.crop_box(100, 80, torch.Generator().manual_seed(seed))
        assert 0.6 * 8000 <= height * width <= 8000 * 1.02
        assert 0 <= top <= 80 - height and 0 <= left <= 100 - width


def test_eval_transform_default_resizes_and_center_crops_to_uint8():
    transform = build_eval_transform(16)
    white = Image.new("RGB", (40, 20), (255, 255, 255))
    out = transform(white)
    assert out.shape == (3, 16, 16) and out.dtype == torch.uint8
    assert bool((out == 255).all())
    image = gradient_image()
    assert torch.equal(transform(image), transform(image))
