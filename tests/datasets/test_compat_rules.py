"""The original release's evaluation rules (``compat="original"``) on small synthetic files.

Each test states one rule of the specification (fixtures/upstream_pipeline_tiny/README.md,
"Quirks of the original") on inputs the reference fixture does not hold."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from real20m.datasets.annotations import GOODS, PHOTO
from real20m.datasets.items import FrameFiles, ItemLoader, ItemRoots, choose_frames, decode_frame, item_text, \
    read_text_lines
from real20m.datasets.original_compat import frame_indices, skip_unreadable_and_pad, text_mode_lines, video_title
from real20m.datasets.transforms import build_eval_transform

from .conftest import shard, write_image

GOODS_LINES = ["50001", "cat", "brand", "entity", "  Red Dress  ", "desc"]


def text_of(tmp_path, content: bytes, source=PHOTO, issues=None) -> str:
    path = tmp_path / "item.txt"
    path.write_bytes(content)
    return item_text(str(path), source, [] if issues is None else issues, compat="original")


def goods_file(lines, end="\n") -> bytes:
    return (end.join(lines) + end).encode()


# --------------------------------------------------------------------------- reading lines


def test_lines_are_read_as_text_mode_readlines():
    assert text_mode_lines("a\nb\n") == ["a\n", "b\n"]
    assert text_mode_lines("a\nb") == ["a\n", "b"]  # the last line keeps no newline it lacks
    assert text_mode_lines("a\r\nb\rc") == ["a\n", "b\n", "c"]  # universal newlines
    assert text_mode_lines("a\n\nb\n") == ["a\n", "\n", "b\n"]
    assert text_mode_lines("") == []
    assert text_mode_lines("a\u2028b\x0c\x85c\n") == ["a\u2028b\x0c\x85c\n"]  # only newlines split


def test_default_lines_split_at_newlines_only(tmp_path):
    path = tmp_path / "goods.txt"
    path.write_bytes(goods_file(["1", "cat", "brand", "entity", "title\u2028with separator", "desc"], "\r\n"))
    lines = read_text_lines(str(path), [])
    assert len(lines) == 6 and lines[4] == "title\u2028with separator"


# --------------------------------------------------------------------------- goods text


@pytest.mark.parametrize("content, title", [
    (goods_file(GOODS_LINES), "Red Dress"),
    (goods_file(GOODS_LINES)[:-1], "Red Dress"),  # a final newline adds no line
    (goods_file(GOODS_LINES, "\r\n"), "Red Dress"),
    (goods_file(GOODS_LINES[:5]), ""),  # 5 lines
    (goods_file(GOODS_LINES + ["more description"]), ""),  # 7 lines
    (goods_file(GOODS_LINES) + b"\n", ""),  # a blank 7th line is a line
    (goods_file(GOODS_LINES[:4] + ["null", "desc"]), "null"),  # no null handling
    (goods_file(GOODS_LINES[:4] + ["", "desc"]), ""),
])
def test_goods_title_is_line_five_of_exactly_six(tmp_path, content, title):
    assert text_of(tmp_path, content, GOODS) == title


def test_missing_text_file_gives_empty_text_and_an_issue(tmp_path):
    for source in (GOODS, PHOTO):
        issues = []
        assert item_text(str(tmp_path / "absent.txt"), source, issues, compat="original") == ""
        assert issues == [("missing_text", str(tmp_path / "absent.txt"))]


# --------------------------------------------------------------------------- video text


@pytest.mark.parametrize("content, text", [
    (b"cap\ntitle\nbody\n", "title\n|body\n|cap\n"),
    (b"cap\ntitle\nbody", "title\n|body|cap\n"),
    (b"cap\r\ntitle\r\nbody\r\n", "title\n|body\n|cap\n"),  # CRLF reads as LF
    (b"cap\rtitle\rbody", "title\n|body|cap\n"),
    # null is recognised only without a newline: the last line of a file that does not end in one
    (b"cap\nnull\nbody\n", "null\n|body\n|cap\n"),
    (b"null\nnull\nnull\n", "null\n|null\n"),  # the text equals the title 'null\n': dropped as a duplicate
    (b"cap\ntitle\nnull", "title\n|cap\n"),
    (b"cap\ntitle\nnull\n", "title\n|null\n|cap\n"),
    (b"cap\nnull", "cap\n"),
    (b"null", ""),
    # the text is left out when it equals the title, newline included
    (b"cap\nsame\nsame\n", "same\n|cap\n"),
    (b"cap\nsame\nsame", "same\n|same|cap\n"),
    (b"", ""),
])
def test_video_text_rules(tmp_path, content, text):
    assert text_of(tmp_path, content) == text


def test_video_text_cuts_count_newlines():
    body39 = "b" * 39 + "\n"  # 40 characters with its newline: kept whole
    assert video_title(["c\n", "t\n", body39]) == "t\n|" + body39 + "|c\n"
    body40 = "b" * 40 + "\n"  # the cut drops the newline
    assert video_title(["c\n", "t\n", body40]) == "t\n|" + "b" * 40 + "|c\n"
    # 80 characters in all, newlines and separators included: "t"*30 + "\n|" + 40 + "|" + 7 of the caption
    text = video_title(["c" * 20 + "\n", "t" * 30 + "\n", "b" * 50 + "\n"])
    assert text == "t" * 30 + "\n|" + "b" * 40 + "|" + "c" * 7 and len(text) == 80


def test_video_text_of_short_files_leaves_missing_lines_out():
    assert video_title(["cap\n", "title"]) == "title|cap\n"
    assert video_title(["cap"]) == "cap"
    assert video_title([]) == ""


# --------------------------------------------------------------------------- frames


@pytest.mark.parametrize("clip_length", [1, 2, 3, 5, 8])
def test_frame_indices_are_floor_2i_plus_1_n_over_2c(clip_length):
    for n in range(1, 51):
        expected = [math.floor((2 * i + 1) * n / (2 * clip_length)) for i in range(clip_length)]
        float_expression = [int((2 * i + 1) * (n / clip_length) / 2) for i in range(clip_length)]
        assert frame_indices(n, clip_length) == expected == float_expression


def test_frame_indices_examples_of_the_specification():
    assert frame_indices(2, 5) == [0, 0, 1, 1, 1]
    assert frame_indices(3, 5) == [0, 0, 1, 2, 2]
    assert frame_indices(4, 5) == [0, 1, 2, 2, 3]
    assert frame_indices(7, 5) == [0, 2, 3, 4, 6]
    assert frame_indices(12, 5) == [1, 3, 6, 8, 10]
    assert frame_indices(5, 1) == [2]  # goods: the middle listed path
    with pytest.raises(ValueError):
        frame_indices(0, 5)


def test_unreadable_frames_are_skipped_and_the_clip_padded_with_the_last_loaded():
    assert skip_unreadable_and_pad([0, 1, 3, 4, 5], lambda index: index != 3) == [0, 1, 4, 5, 5]
    assert skip_unreadable_and_pad([0, 0, 1, 1, 1], lambda index: index == 0) == [0, 0, 0, 0, 0]
    assert skip_unreadable_and_pad([0, 1], lambda index: False) is None


def frame_colour(image: Image.Image) -> int:
    return image.getpixel((0, 0))[1]


def test_the_clip_skips_corrupt_and_missing_files(tmp_path):
    paths = [str(tmp_path / f"{k}.jpg") for k in range(6)]
    for k in (0, 1, 4, 5):
        write_image(paths[k], color=(0, 40 * k, 0))
    (tmp_path / "2.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # 3.jpg is missing
    issues = []
    files = FrameFiles(paths, issues)
    chosen = choose_frames(files, [0, 2, 3, 3, 4], compat="original")
    assert [round(frame_colour(files.image(index)) / 40) for index in chosen] == [0, 4, 4, 4, 4]
    assert issues == [("corrupt_image", paths[2]), ("corrupt_image", paths[3])]  # each file once
    assert choose_frames(FrameFiles(paths[2:4], []), [0, 1], compat="original") is None


@pytest.fixture
def roots(tmp_path):
    return ItemRoots(*(str(tmp_path / name) for name in ("gi", "gt", "vi", "vt")))


def test_loader_uses_the_original_frame_choice_and_skip(roots):
    pid = 1000006
    listed = [f"6/{pid}_{k}.jpg" for k in range(6)]
    for k in (0, 1, 2, 4, 5):  # _3 missing
        write_image(shard(roots.photo_img_root, pid, f"{pid}_{k}.jpg"), color=(0, 40 * k, 0))
    loader = ItemLoader(roots, build_eval_transform(8, "original"), clip_length=5, compat="original")
    clip = loader.clip_frames(pid, PHOTO, frame_paths=listed)
    assert [path.rsplit("_", 1)[1] for path, _ in clip] == ["0.jpg", "1.jpg", "4.jpg", "5.jpg", "5.jpg"]
    sample = loader.load(pid, PHOTO, frame_paths=listed)
    assert sample["frames"].shape == (5, 3, 8, 8) and torch.equal(sample["frames"][3], sample["frames"][4])
    assert ("corrupt_image", shard(roots.photo_img_root, pid, f"{pid}_3.jpg")) in sample["issues"]
    # Training draws keep our rules: segment 3 of 6 frames is frame _3 alone, replaced by its
    # nearest readable neighbour (the earlier one), not skipped.
    trained = loader.clip_frames(pid, PHOTO, np.random.default_rng(0), frame_paths=listed)
    assert len(trained) == 5 and trained[3][0].endswith("_2.jpg")


def test_loader_without_readable_frame_returns_none_and_reports_it(roots):
    loader = ItemLoader(roots, build_eval_transform(8, "original"), clip_length=5, compat="original")
    issues = []
    assert loader.load(1000007, PHOTO, frame_paths=["7/a.jpg", "7/b.jpg"], issues=issues) is None
    assert [kind for kind, _ in issues] == ["missing_text", "corrupt_image", "corrupt_image"]
    blank = loader.load_with_blank_frames(1000007, PHOTO)
    assert blank["frames"].shape == (5, 3, 8, 8) and not blank["frames"].any()


def test_goods_use_the_middle_listed_image(roots):
    pid = 50002
    names = [f"2/{pid}_{k}.jpg" for k in range(3)]
    for k, name in enumerate(names):
        write_image(f"{roots.goods_img_root}/{name}", color=(0, 40 * k, 0))
    original = ItemLoader(roots, build_eval_transform(8, "original"), compat="original")
    assert [path for path, _ in original.clip_frames(pid, GOODS, frame_paths=names)] == \
        [f"{roots.goods_img_root}/{names[1]}"]
    default = ItemLoader(roots, build_eval_transform(8))
    assert [path for path, _ in default.clip_frames(pid, GOODS, frame_paths=names)] == \
        [f"{roots.goods_img_root}/{names[0]}"]


def test_loader_refuses_an_unknown_compat(roots):
    with pytest.raises(ValueError, match="compat"):
        ItemLoader(roots, build_eval_transform(8), compat="bogus")


# --------------------------------------------------------------------------- pixels


def gradient_image(width, height, mode="RGB") -> Image.Image:
    x = (np.arange(width * height * 3) * 37 % 256).astype(np.uint8).reshape(height, width, 3)
    return Image.fromarray(x).convert(mode)


@pytest.mark.parametrize("size", [(96, 64), (20, 24), (33, 31), (300, 200)])
def test_original_eval_transform_is_a_bilinear_squash(size):
    image = gradient_image(*size)
    out = build_eval_transform(32, compat="original")(image)
    bilinear = torch.from_numpy(np.array(image.resize((32, 32), Image.Resampling.BILINEAR))).permute(2, 0, 1)
    assert out.dtype == torch.uint8 and out.shape == (3, 32, 32) and torch.equal(out, bilinear)
    nearest = torch.from_numpy(np.array(image.resize((32, 32), Image.Resampling.NEAREST))).permute(2, 0, 1)
    assert not torch.equal(out, nearest)


def test_eval_transform_refuses_an_unknown_compat():
    with pytest.raises(ValueError, match="compat"):
        build_eval_transform(32, compat="bogus")


def test_grayscale_images_are_replicated_to_three_channels(tmp_path):
    path = tmp_path / "gray.jpg"
    gradient_image(33, 31, "L").save(path)
    pixels = build_eval_transform(32, compat="original")(decode_frame(str(path)).image)
    assert torch.equal(pixels[0], pixels[1]) and torch.equal(pixels[1], pixels[2])


def model_normalisation(pixels: torch.Tensor) -> torch.Tensor:
    """The model's own ``normalize_pixels`` (run on a stand-in holding its statistics, no towers built)."""
    from real20m.models.qcd import IMAGENET_MEAN, IMAGENET_STD, QCDModel

    statistics = SimpleNamespace(pixel_mean=torch.tensor(IMAGENET_MEAN).view(3, 1, 1),
                                 pixel_std=torch.tensor(IMAGENET_STD).view(3, 1, 1))
    return QCDModel.normalize_pixels(statistics, pixels)


def test_model_normalisation_is_bitwise_the_originals():
    # The original: uint8 -> float64 array -> float32 tensor -> / 255 in float32 -> Normalize.
    # Checked on the CPU, where the original normalised (in its loader).
    from real20m.models.qcd import IMAGENET_MEAN, IMAGENET_STD

    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 256).expand(3, 2, 256).contiguous()
    original = torch.from_numpy(levels.numpy().astype(np.float64)).float().div(255)
    original = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(original)
    ours = model_normalisation(levels)
    assert ours.dtype == torch.float32 and torch.equal(ours, original)
