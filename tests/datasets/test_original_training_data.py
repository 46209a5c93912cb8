"""The original release's training text and training images (``train_text`` / ``train_transform``)."""
import numpy as np
import torch
from PIL import Image

from real20m.datasets.original_compat import training_goods_title, training_video_title
from real20m.datasets.transforms import build_train_transform

GOODS_LINES = ["1\n", "cat\n", "brand\n", "entity\n", "夏季新款碎花雪纺连衣裙女中长款\n", "desc\n"]
VIDEO_LINES = ["caption\n", "title\n", "some text\n"]


def test_goods_titles_of_ten_characters_are_edited_at_a_fifth_of_their_positions_with_probability_0_6():
    title = GOODS_LINES[4].strip()
    results = [training_goods_title(GOODS_LINES, np.random.default_rng(seed)) for seed in range(2000)]
    unchanged = sum(result == title for result in results) / len(results)
    assert 0.36 < unchanged < 0.44  # the draw > 0.4 decides; an edit can also leave the title as it was
    edits = int(len(title) * 0.2)
    assert all(len(title) - edits <= len(result) <= len(title) + edits for result in results)
    assert any(" " in result for result in results) and any(len(result) < len(title) for result in results)


def test_short_titles_and_files_that_are_not_six_lines_follow_the_original():
    short = ["1\n", "c\n", "b\n", "e\n", "短标题\n", "d\n"]
    assert training_goods_title(short, np.random.default_rng(0)) == "短标题"
    assert training_goods_title(GOODS_LINES[:5], np.random.default_rng(0)) == ""


def test_each_video_field_is_kept_with_probability_0_8_and_all_may_go():
    results = [training_video_title(VIDEO_LINES, np.random.default_rng(seed)) for seed in range(3000)]
    for field in ("title\n", "some text\n", "caption\n"):
        assert 0.76 < sum(field in result for result in results) / len(results) < 0.84
    assert "" in results
    null_with_newline = ["null\n", "title\n", "null"]  # only the last, newline-less null is recognised
    kept = {training_video_title(null_with_newline, np.random.default_rng(seed)) for seed in range(200)}
    assert "title\n|null\n" in kept and not any(part == "null" for text in kept for part in text.split("|"))


def test_original_training_images_are_squashed_with_nearest_and_flipped_per_clip():
    transform = build_train_transform(8, "original")
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)) for _ in range(5)]
    flips = set()
    for seed in range(20):
        clip = transform.clip(frames, torch.Generator().manual_seed(seed))
        nearest = [torch.from_numpy(np.array(frame.resize((8, 8), Image.Resampling.NEAREST))).permute(2, 0, 1)
                   for frame in frames]
        flipped = [torch.equal(clip[i], nearest[i].flip(-1)) for i in range(5)]
        straight = [torch.equal(clip[i], nearest[i]) for i in range(5)]
        assert all(flipped) or all(straight)  # one decision for the whole clip
        flips.add(all(flipped))
    assert flips == {True, False}
