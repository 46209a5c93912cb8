import numpy as np
import pytest
import torch
from PIL import Image

from real20m.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, build_eval_transform, build_train_transform


def gradient_image(width=48, height=32):
    x = np.tile(np.arange(width, dtype=np.uint8) * 5, (height, 1))
    return Image.fromarray(np.stack([x, x, 255 - x], axis=-1))


def test_train_transform_shape_and_generator_reproducibility():
    transform = build_train_transform(24)
    image = gradient_image()
    first = transform(image, torch.Generator().manual_seed(5))
    again = transform(image, torch.Generator().manual_seed(5))
    assert first.shape == (3, 24, 24) and first.dtype == torch.float32
    assert torch.equal(first, again)
    others = [transform(image, torch.Generator().manual_seed(s)) for s in range(6)]
    assert any(not torch.equal(first, other) for other in others)
    assert transform(image).shape == (3, 24, 24)  # global RNG fallback


def test_train_crop_box_respects_scale():
    transform = build_train_transform(24)
    for seed in range(50):
        top, left, height, width = transform.crop_box(100, 80, torch.Generator().manual_seed(seed))
        assert 0.6 * 8000 <= height * width <= 8000 * 1.02
        assert 0 <= top <= 80 - height and 0 <= left <= 100 - width


def test_eval_transform_default_is_deterministic_and_normalised():
    transform = build_eval_transform(16)
    white = Image.new("RGB", (40, 20), (255, 255, 255))
    out = transform(white)
    assert out.shape == (3, 16, 16)
    expected = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(out.mean(dim=(1, 2)), expected, atol=1e-4)


def test_eval_transform_original_uses_nearest_square_resize():
    image = Image.fromarray(np.arange(4 * 8 * 3, dtype=np.uint8).reshape(4, 8, 3) * 2)
    out = build_eval_transform(8, compat="original")(image)
    nearest = np.array(image.resize((8, 8), Image.NEAREST), dtype=np.float32) / 255
    expected = (torch.from_numpy(nearest).permute(2, 0, 1) - torch.tensor(IMAGENET_MEAN)[:, None, None]) / \
        torch.tensor(IMAGENET_STD)[:, None, None]
    assert out.shape == (3, 8, 8) and torch.allclose(out, expected, atol=1e-5)
    default = build_eval_transform(8)(image)
    assert default.shape == (3, 8, 8) and not torch.allclose(out, default)
    with pytest.raises(ValueError, match="compat"):
        build_eval_transform(8, compat="bogus")
