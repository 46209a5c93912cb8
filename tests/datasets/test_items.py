import os

import numpy as np
import pytest
import torch

from real20m.datasets.annotations import GOODS, PHOTO, UnsafePathError
from real20m.datasets.items import (
    FrameFiles, ItemLoader, ItemRoots, choose_frames, goods_text, item_text, perturb_title, read_text_lines,
    segment_frame_indices, video_frame_paths, video_text,
)
from real20m.datasets.transforms import build_eval_transform

from .conftest import shard, write_image, write_text


def test_goods_text_is_title_line():
    assert goods_text(["50001", "cat", "brand", "entity", "red dress", "desc"]) == "red dress"
    assert goods_text(["50001", "cat", "brand", "entity", "null", "desc"]) == ""
    assert goods_text(["50001"]) == ""


def test_video_text_joins_title_text40_caption_and_skips_null():
    body = "b" * 50
    assert video_text(["cap", "title", body]) == "title|" + "b" * 40 + "|cap"
    assert video_text(["null", "title", "null"]) == "title"
    assert video_text(["cap", "null", "body"]) == "body|cap"
    long = video_text(["c" * 70, "t" * 30, "b" * 40])
    assert len(long) == 80 and long == ("t" * 30 + "|" + "b" * 40 + "|" + "c" * 70)[:80]


def test_training_text_augmentation_is_random_but_reproducible():
    lines = ["caption words", "a fairly long title for perturbation", "body"]
    draws = {video_text(lines, np.random.default_rng(seed)) for seed in range(40)}
    assert len(draws) > 5  # fields dropped and titles perturbed
    assert video_text(lines, np.random.default_rng(7)) == video_text(lines, np.random.default_rng(7))
    for text in draws:
        assert text and len(text) <= 80
    perturbed = {perturb_title("abcdefghijklmnopqrstuvwxyz", np.random.default_rng(s)) for s in range(20)}
    assert "abcdefghijklmnopqrstuvwxyz" in perturbed and len(perturbed) > 3


def test_missing_and_non_utf8_text(tmp_path):
    issues = []
    assert item_text(str(tmp_path / "none.txt"), GOODS, issues) == ""
    assert issues == [("missing_text", str(tmp_path / "none.txt"))]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"cap\nti\xfftle\nbody\n")
    issues = []
    assert read_text_lines(str(bad), issues)[1] == "ti\ufffdtle"
    assert item_text(str(bad), PHOTO, []) == "ti\ufffdtle|body|cap"
    assert issues == [("non_utf8", str(bad))]


@pytest.mark.parametrize("frames, clip, middles", [(10, 5, [1, 3, 5, 7, 9]), (3, 5, [0, 0, 1, 1, 2]),
                                                   (1, 5, [0] * 5), (5, 5, [0, 1, 2, 3, 4]), (7, 2, [1, 5])])
def test_eval_frames_are_segment_middles(frames, clip, middles):
    assert segment_frame_indices(frames, clip).tolist() == middles


def test_train_frames_stay_in_their_segments():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        indices = segment_frame_indices(20, 5, rng)
        assert all(4 * i <= index < 4 * (i + 1) for i, index in enumerate(indices))
        seen.add(tuple(indices))
    assert len(seen) > 50
    assert segment_frame_indices(2, 5, rng).tolist() == [0, 0, 0, 1, 1]


def test_video_frame_paths_resolution_order(tmp_path):
    root = str(tmp_path / "images")
    pid = 1000012
    cover = shard(root, pid, f"{pid}.jpg")
    assert video_frame_paths(pid, root) == [cover]
    for k in range(3):
        write_image(shard(root, pid, f"{pid}_{k}.jpg"))
    write_image(shard(root, pid, f"{pid}_4.jpg"))  # after a gap: not a frame
    assert video_frame_paths(pid, root) == [shard(root, pid, f"{pid}_{k}.jpg") for k in range(3)]
    frame_lists = str(tmp_path / "frameids")
    write_text(shard(frame_lists, pid, f"{pid}.txt"), ["12/a.jpg,12/b.jpg"])
    assert video_frame_paths(pid, root, frame_lists) == [os.path.join(root, "12/a.jpg"), os.path.join(root, "12/b.jpg")]
    assert video_frame_paths(pid, root, frame_lists, explicit=["x.jpg"]) == [os.path.join(root, "x.jpg")]
    write_text(shard(frame_lists, pid, f"{pid}.txt"), ["12/a.jpg,../../etc/passwd"])
    with pytest.raises(UnsafePathError):
        video_frame_paths(pid, root, frame_lists)


def test_unreadable_frames_fall_back_to_readable_neighbours(tmp_path):
    paths = [str(tmp_path / f"{k}.jpg") for k in range(4)]
    write_image(paths[0], color=(255, 0, 0))
    (tmp_path / "1.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (tmp_path / "2.jpg").write_bytes(b"")  # zero bytes; 3.jpg missing
    issues = []
    files = FrameFiles(paths, issues)
    assert choose_frames(files, [0, 1, 2, 3]) == [0, 0, 0, 0]
    assert files.image(0).getpixel((0, 0))[0] > 200
    assert issues == [("corrupt_image", paths[1]), ("corrupt_image", paths[2]), ("corrupt_image", paths[3])]
    assert choose_frames(FrameFiles(paths[1:], []), [0, 1]) is None


@pytest.fixture
def loader(layout):
    roots = ItemRoots(layout.goods_img_root, layout.goods_text_root, layout.photo_img_root, layout.photo_text_root)
    return ItemLoader(roots, build_eval_transform(16), clip_length=4)


def test_item_loader_goods_and_video(loader):
    goods = loader.load(50001, GOODS)
    assert goods["frames"].shape == (1, 3, 16, 16) and goods["title"] == "red dress" and goods["source"] == "goods"
    video = loader.load(1000001, PHOTO)
    assert video["frames"].shape == (4, 3, 16, 16) and video["issues"] == []
    assert video["title"] == "title 1000001|body text|caption 1000001"
    cover_only = loader.load(1000003, PHOTO)
    assert cover_only["frames"].shape == (4, 3, 16, 16)
    assert torch.equal(cover_only["frames"][0], cover_only["frames"][3])


def test_item_loader_returns_none_without_any_readable_frame(loader, layout):
    os.remove(shard(layout.goods_img_root, 50002, "50002.jpg"))
    assert loader.load(50002, GOODS) is None
    blank = loader.load_with_blank_frames(50002, GOODS)
    assert blank["frames"].shape == (1, 3, 16, 16) and blank["title"] == "blue dress"
    assert blank["frames"].dtype == torch.uint8 and not blank["frames"].any()  # black
