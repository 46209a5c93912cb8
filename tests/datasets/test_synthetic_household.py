"""The "household" style: its own layout rules, determinism, the validation split, and that the
project's readers and training loader take it as they take the products style."""
import numpy as np
import pytest
import torch
from PIL import Image

from real20m.config import parse_config
from real20m.datasets import build_train_dataset
from real20m.datasets.annotations import load_ground_truth, load_items, load_query_groups
from real20m.datasets.samplers import SourceBatchSampler
from real20m.datasets.synthetic import generate
from real20m.datasets.synthetic_household import MIN_FRAMES, NULL, FINISHES, KINDS, SURFACES

from tests.datasets.test_synthetic import read_rows, tree_digest

SMALL = dict(num_queries=30, num_test_queries=6, num_val_queries=4, goods_per_query=2, videos_per_query=3,
             frames_per_video=5, image_size=32)


@pytest.fixture(scope="module")
def household(tmp_path_factory):
    root = tmp_path_factory.mktemp("household")
    return root, generate(root, seed=5, style="household", **SMALL)


def test_same_seed_same_bytes_other_seed_differs(household, tmp_path):
    root, _ = household
    assert tree_digest(generate(tmp_path / "again", seed=5, style="household", **SMALL)["out_dir"]) == tree_digest(root)
    assert tree_digest(generate(tmp_path / "other", seed=6, style="household", **SMALL)["out_dir"]) != tree_digest(root)


def test_queries_are_household_attribute_combinations_and_splits_are_disjoint(household):
    root, summary = household
    assert (summary["style"], summary["train_queries"], summary["test_queries"], summary["val_queries"]) == \
        ("household", 30, 6, 4)
    train = {row[0] for row in read_rows(root / "train_file/train.txt")}
    test = {row[2] for row in read_rows(root / "test_file/goods_gallery.txt")}
    val = {row[2] for row in read_rows(root / "val_file/goods_gallery.txt")}
    assert len(train) == 30 and len(test) == 6 and len(val) == 4
    assert not (train & test or train & val or test & val)
    for query in train | test | val:
        assert query.startswith(FINISHES) and query.endswith(KINDS) and any(s in query for s in SURFACES)


def test_images_are_not_square_and_videos_vary_in_length(household):
    root, _ = household
    items = read_rows(root / "train_file/train_items.txt")
    goods = [row for row in items if row[1] == "goods"]
    videos = [row for row in items if row[1] == "photo"]
    assert Image.open(root / "Real400K/goods/images" / goods[0][3]).size == (32, 40)   # portrait 4:5
    assert Image.open(root / "Real400K/video/images" / videos[0][3].split(",")[0]).size == (57, 32)  # 16:9
    lengths = [len(row[3].split(",")) for row in videos]
    assert min(lengths) >= MIN_FRAMES and max(lengths) <= 5 and len(set(lengths)) > 1


def test_video_text_is_mostly_null(household):
    root, _ = household
    videos = [row for row in read_rows(root / "train_file/train_items.txt") if row[1] == "photo"]
    texts = [open(root / "Real400K/video/text" / row[4], encoding="utf-8").read().splitlines() for row in videos]
    caption_or_title_null = np.mean([[line == NULL for line in lines[:2]] for lines in texts], axis=0)
    assert (caption_or_title_null > 0.5).all()
    assert any(lines[0] == lines[1] == NULL for lines in texts)


def test_project_readers_and_training_loader_take_it(household):
    root, _ = household
    groups = load_query_groups(str(root / "train_file/train.txt"))
    assert len(groups) == 30
    for split in ("test_file", "val_file"):
        gallery = load_items(str(root / split / "goods_gallery.txt"))
        truth = load_ground_truth(str(root / split / "eval_gt_video2goods.txt"))
        assert set(doc for docs in truth.values() for doc in docs) <= set(gallery.pids.tolist())
    cfg = parse_config(["--config", "tiny", "--data_root", str(root), "--image_size", "32", "--vocab_size", "300"])
    dataset = build_train_dataset(cfg.data)
    sampler = SourceBatchSampler(dataset, batch_size=4, seed=0)
    for key in next(iter(sampler)):
        sample = dataset[key]
        # Portrait goods and landscape frames alike become clips of square crops.
        assert sample["frames"].shape[1:] == (3, 32, 32) and sample["frames"].dtype == torch.uint8
        assert sample["query"] and not sample["issues"]
