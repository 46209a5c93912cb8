"""The byte-sending loader mode (``ItemLoader(jpeg_bytes=True)``) and ``DeviceJpegDecoder``.

Without CUDA the decoder runs on the CPU (``device="cpu"``, torchvision's CPU decode_jpeg): that
checks everything but nvjpeg. Its pixels differ from the PIL path by the decoders and by torch's
antialiased filters versus PIL's; measured here (photo-like 200x360 frames, JPEG quality 90) as
mean absolute difference / largest pixel difference in 8-bit levels vs the full-decode PIL path:
train 0.08 / 1, eval 0.10 / 1 (both decoders are libjpeg-turbo; the bounds leave a margin).
"""
import numpy as np
import pytest
import torch

from real20m.datasets.annotations import PHOTO
from real20m.datasets.items import ItemLoader, ItemRoots
from real20m.datasets.transforms import DeviceJpegDecoder, build_eval_transform, build_train_transform

from .test_reduced_decode import FRAME, SIZE, differences, write_jpeg

BOUNDS = {True: (0.5, 8), False: (0.5, 8)}  # train / eval: (mean abs difference, largest difference)


@pytest.fixture
def video(tmp_path):
    roots = ItemRoots(*(str(tmp_path / name) for name in ("gi", "gt", "vi", "vt")))
    for folder in ("vi/3", "vt/3"):
        (tmp_path / folder).mkdir(parents=True)
    names = [f"3/1000003_{k}.jpg" for k in range(6)]
    for k, name in enumerate(names):
        write_jpeg(tmp_path / "vi" / name, 10 + k)
    (tmp_path / "vt/3/1000003.txt").write_text("caption\ntitle\ntext\n", encoding="utf-8")
    return roots, names


def loads(roots, names, train, jpeg_bytes, reduced_decode=False):
    transform = build_train_transform(SIZE) if train else build_eval_transform(SIZE)
    loader = ItemLoader(roots, transform, clip_length=5, jpeg_bytes=jpeg_bytes, reduced_decode=reduced_decode)
    samples = []
    for seed in range(3):
        rng = np.random.default_rng(seed) if train else None
        generator = torch.Generator().manual_seed(seed) if train else None
        samples.append(loader.load(1000003, PHOTO, rng, generator, names))
    return samples


@pytest.mark.parametrize("train", [True, False])
def test_byte_mode_sends_file_bytes_and_the_same_plans(video, train):
    roots, names = video
    sent = loads(roots, names, train, jpeg_bytes=True)
    pixels = loads(roots, names, train, jpeg_bytes=False)
    transform = build_train_transform(SIZE) if train else build_eval_transform(SIZE)
    for seed, (a, b) in enumerate(zip(sent, pixels)):
        assert "frames" not in a and a["title"] == b["title"] and a["issues"] == b["issues"]
        assert len(a["jpeg"]) == 5 and all(data.dtype == torch.uint8 and data.dim() == 1 for data in a["jpeg"])
        assert a["plans"].shape == (5, 5) and a["plans"].dtype == torch.int64
        files = {bytes(open(f"{roots.photo_img_root}/{name}", "rb").read()) for name in names}
        assert all(bytes(data.numpy()) in files for data in a["jpeg"])
        generator = torch.Generator().manual_seed(seed) if train else None
        expected = [transform.plan(*FRAME, generator) for _ in range(5)]
        assert a["plans"].tolist() == [list(plan) for plan in expected]  # same draws, original coordinates


@pytest.mark.parametrize("train", [True, False])
def test_cpu_decode_of_the_bytes_gives_the_normal_crops(video, train):
    roots, names = video
    sent = loads(roots, names, train, jpeg_bytes=True)
    pixels = loads(roots, names, train, jpeg_bytes=False)
    decoder = DeviceJpegDecoder(SIZE, train=train, device="cpu")
    batch = decoder([sample["jpeg"] for sample in sent], [sample["plans"] for sample in sent])
    expected = torch.stack([sample["frames"] for sample in pixels])
    assert batch.shape == expected.shape == (3, 5, 3, SIZE, SIZE) and batch.dtype == torch.uint8
    mean, largest = differences(batch, expected)
    assert mean <= BOUNDS[train][0] and largest <= BOUNDS[train][1], (mean, largest)


def test_decoder_repeats_single_frames_like_stack_frames(video):
    roots, names = video
    [clip] = loads(roots, names, True, jpeg_bytes=True)[:1]
    decoder = DeviceJpegDecoder(SIZE, train=True, device="cpu")
    batch = decoder([clip["jpeg"], clip["jpeg"][:1]], [clip["plans"], clip["plans"][:1]])
    assert batch.shape == (2, 5, 3, SIZE, SIZE)
    assert all(torch.equal(batch[1, t], batch[0, 0]) for t in range(5))


def test_byte_mode_refuses_the_original_compat_transform(video):
    roots, _ = video
    with pytest.raises(ValueError, match="jpeg_bytes"):
        ItemLoader(roots, build_eval_transform(SIZE, "original"), jpeg_bytes=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: decode_jpeg(device='cuda') uses nvjpeg")
@pytest.mark.parametrize("train", [True, False])
def test_cuda_decode_matches_the_cpu_decode(video, train):
    roots, names = video
    sent = loads(roots, names, train, jpeg_bytes=True)
    args = [sample["jpeg"] for sample in sent], [sample["plans"] for sample in sent]
    on_gpu = DeviceJpegDecoder(SIZE, train=train, device="cuda")(*args)
    on_cpu = DeviceJpegDecoder(SIZE, train=train, device="cpu")(*args)
    assert on_gpu.device.type == "cuda" and on_gpu.shape == on_cpu.shape
    mean, largest = differences(on_gpu.cpu(), on_cpu)
    assert mean <= 1.0 and largest <= 48, (mean, largest)  # nvjpeg's IDCT/upsampling differ slightly
