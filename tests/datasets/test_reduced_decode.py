"""Reduced-scale JPEG decoding (``ItemLoader(reduced_decode=True)``, the default).

Same frames, same crop boxes and the same random stream as full-size decoding; the pixels differ
only by the decoder's DCT-domain scaling. Measured against full decoding on photo-like frames
(noise, ripples, hard edges, JPEG quality 90), in 8-bit levels, mean absolute difference over
all output pixels (worst single frame) / largest single-pixel difference:

* 720x1280 -> 224, scale 1/2: train 0.37 (0.39) / 16, eval 0.48 (0.50) / 16;
* these 200x360 frames: train 1/2 -> 48: 0.41 (0.57) / 23; eval 1/4 -> 48: 1.07 (1.40) / 29;
  eval 1/8 -> 24: 1.91 (2.30) / 35.

``BOUNDS`` leaves a margin over those. ``reduced_decode=False`` and ``compat="original"`` give
today's pixels bit for bit.
"""
import numpy as np
import pytest
import torch
from PIL import Image

from real20m.datasets.annotations import GOODS, PHOTO
from real20m.datasets.items import ItemLoader, ItemRoots, decode_frame
from real20m.datasets.transforms import EvalTransform, TrainTransform, build_eval_transform, \
    build_train_transform

# decoder scale -> (mean abs difference over frames, worst frame's mean, largest pixel difference)
BOUNDS = {2: (0.6, 1.0, 40), 4: (1.4, 2.0, 48), 8: (2.5, 3.0, 56)}
FRAME = (200, 360)  # width, height: a small portrait "phone" frame
SIZE = 48           # train: scale 2; eval: scale 4 (24 -> 8)


def photo_like(width, height, seed):
    """Smooth colour field + ripples + hard-edged shapes + noise: decodes like a photo."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (4, 3, 3), dtype=np.uint8))
    field = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    field = field + (30 * np.sin(xs / rng.uniform(4, 12)) * np.cos(ys / rng.uniform(4, 12)))[..., None]
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(5, width / 4)
        mask = (np.abs(xs - cx) < r) & (np.abs(ys - cy) < r / 2)
        field[mask] = rng.uniform(0, 255, 3)
    field += rng.normal(0, 5, field.shape)
    return Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))


def write_jpeg(path, seed, size=FRAME):
    photo_like(*size, seed).save(path, quality=90)
    return str(path)


def differences(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int]:
    diff = (a.int() - b.int()).abs()
    return diff.float().mean().item(), int(diff.max())


@pytest.fixture
def video(tmp_path):
    """A video of 7 frames (frame 3 corrupt) and a goods image, in the Real400K layout."""
    roots = ItemRoots(*(str(tmp_path / name) for name in ("gi", "gt", "vi", "vt")))
    for folder in ("gi/7", "gt/7", "vi/12", "vt/12"):
        (tmp_path / folder).mkdir(parents=True)
    names = []
    for k in range(7):
        name = f"12/1000012_{k}.jpg"
        write_jpeg(tmp_path / "vi" / name, k)
        names.append(name)
    (tmp_path / "vi" / names[3]).write_bytes(b"\xff\xd8 not a jpeg")
    write_jpeg(tmp_path / "gi/7/50007.jpg", 99, (240, 240))
    (tmp_path / "vt/12/1000012.txt").write_text("caption\ntitle\ntext\n", encoding="utf-8")
    (tmp_path / "gt/7/50007.txt").write_text("1\nc\nb\ne\ngoods title\nd\n", encoding="utf-8")
    return roots, names


def test_decode_scale_never_upsamples():
    for size in (24, 48, 224):
        train, evaluation = TrainTransform(size), EvalTransform(size)
        for width, height in [(720, 1280), (1280, 720), (800, 800), (1080, 1920), (200, 360), (100, 3000), (64, 64)]:
            scale = train.decode_scale(width, height)
            for seed in range(300):
                top, left, h, w = train.crop_box(width, height, torch.Generator().manual_seed(seed))
                assert scale == 1 or (w / scale >= size and h / scale >= size), (size, width, height, scale)
            x0, y0, x1, y1 = evaluation.crop_region(width, height)
            scale = evaluation.decode_scale(width, height)
            assert scale == 1 or ((x1 - x0) / scale >= size - 1e-9 and (y1 - y0) / scale >= size - 1e-9)
    assert TrainTransform(224).decode_scale(720, 1280) == 2 and EvalTransform(224).decode_scale(720, 1280) == 2
    assert TrainTransform(224).decode_scale(800, 800) == 2 and TrainTransform(224).decode_scale(300, 300) == 1


def test_reduced_decode_is_the_dct_scaled_image(tmp_path):
    path = write_jpeg(tmp_path / "f.jpg", 0)
    frame = decode_frame(path, lambda w, h: 4)
    assert frame.scale == 4 and frame.original_size == FRAME and frame.image.size == (50, 90)
    assert decode_frame(path).image.size == FRAME
    png = tmp_path / "f.png"
    photo_like(*FRAME, 1).save(png)
    assert decode_frame(str(png), lambda w, h: 4).scale == 1  # no draft outside JPEG


@pytest.mark.parametrize("transform, scale", [(TrainTransform(SIZE), 2), (EvalTransform(SIZE), 4),
                                              (EvalTransform(SIZE // 2), 8)])
def test_transform_on_reduced_image_matches_full_decoding(tmp_path, transform, scale):
    train = isinstance(transform, TrainTransform)
    means, largest = [], 0
    for seed in range(12):
        path = write_jpeg(tmp_path / f"{seed}.jpg", seed)
        full = decode_frame(path).image
        reduced = decode_frame(path, transform.decode_scale)
        assert reduced.scale == scale
        for draw in range(3 if train else 1):
            first, second = torch.Generator().manual_seed(draw), torch.Generator().manual_seed(draw)
            expected = transform(full, first) if train else transform(full)
            got = transform.reduced(reduced.image, reduced.original_size, reduced.scale, second)
            assert torch.equal(first.get_state(), second.get_state())  # the same draws
            assert got.shape == expected.shape and got.dtype == torch.uint8
            mean, worst = differences(got, expected)
            means.append(mean)
            largest = max(largest, worst)
    bound_mean, bound_frame, bound_pixel = BOUNDS[scale]
    assert np.mean(means) <= bound_mean and max(means) <= bound_frame and largest <= bound_pixel, \
        (np.mean(means), max(means), largest)


def test_wrong_geometry_would_be_caught(tmp_path):
    """The tolerance separates the decoder's scaling from a box off by a few pixels."""
    transform = EvalTransform(SIZE)
    path = write_jpeg(tmp_path / "f.jpg", 5)
    full = transform(decode_frame(path).image)
    shifted = transform(decode_frame(path).image.crop((6, 6, FRAME[0], FRAME[1])))
    assert differences(full, shifted)[0] > 2 * BOUNDS[4][1]


def loaders(roots, train):
    transform = build_train_transform(SIZE) if train else build_eval_transform(SIZE)
    return ItemLoader(roots, transform, clip_length=5), ItemLoader(roots, transform, clip_length=5,
                                                                    reduced_decode=False)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("source", [PHOTO, GOODS])
def test_item_loader_same_frames_boxes_and_draws(video, train, source):
    roots, names = video
    reduced, full = loaders(roots, train)
    pid = 1000012 if source == PHOTO else 50007
    for seed in range(4):
        states, samples = [], []
        for loader in (reduced, full):
            rng = np.random.default_rng(seed) if train else None
            generator = torch.Generator().manual_seed(seed) if train else None
            samples.append(loader.load(pid, source, rng, generator, names if source == PHOTO else None))
            states.append((rng.bit_generator.state if rng else None, generator.get_state() if generator else None))
        (a, b) = samples
        assert states[0][0] == states[1][0]
        assert states[0][1] is None or torch.equal(states[0][1], states[1][1])
        assert a["title"] == b["title"] and a["issues"] == b["issues"]  # same readability, same frame choice
        assert a["frames"].shape == b["frames"].shape == ((5 if source == PHOTO else 1), 3, SIZE, SIZE)
        scale = reduced.transform.decode_scale(*(FRAME if source == PHOTO else (240, 240)))
        for got, expected in zip(a["frames"], b["frames"]):  # another frame would be ~30 levels off
            mean, worst = differences(got, expected)
            assert mean <= BOUNDS[scale][1] and worst <= BOUNDS[scale][2]
    if source == PHOTO:
        assert ("corrupt_image", f"{roots.photo_img_root}/{names[3]}") in a["issues"]


@pytest.mark.parametrize("train", [True, False])
def test_option_off_gives_todays_pixels_bit_exactly(video, train):
    roots, names = video
    _, full = loaders(roots, train)
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed) if train else None
        rng = np.random.default_rng(seed) if train else None
        sample = full.load(1000012, PHOTO, rng, generator, names)
        clip = full.clip_frames(1000012, PHOTO, np.random.default_rng(seed) if train else None, names)
        generator = torch.Generator().manual_seed(seed)
        expected = torch.stack([full.transform(decode_frame(path).image, generator) if train else full.transform(image)
                                for path, image in clip])
        assert torch.equal(sample["frames"], expected)


def test_small_frames_are_not_reduced_and_stay_bit_exact(tmp_path):
    path = write_jpeg(tmp_path / "small.jpg", 3, (64, 64))
    transform = build_train_transform(48)
    frame = decode_frame(path, transform.decode_scale)
    assert frame.scale == 1
    image = decode_frame(path).image
    assert np.array_equal(np.array(frame.image), np.array(image))


def test_compat_original_keeps_full_decoding_bitwise(video):
    roots, names = video
    transform = build_eval_transform(SIZE, "original")
    for compat_transform in (transform, build_eval_transform(SIZE)):
        loader = ItemLoader(roots, compat_transform, clip_length=5, compat="original", reduced_decode=True)
        sample = loader.load(1000012, PHOTO, frame_paths=names)
        clip = loader.clip_frames(1000012, PHOTO, frame_paths=names)
        assert all(image.size == FRAME for _, image in clip)
        assert torch.equal(sample["frames"], torch.stack([compat_transform(image) for _, image in clip]))
