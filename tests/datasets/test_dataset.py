import dataclasses
import os
import pickle
import subprocess
import sys

import pytest
import torch

from real20m.config import DataConfig
from real20m.datasets.annotations import AnnotationError
from real20m.datasets.collate import Collator, stack_frames
from real20m.datasets.dataset import build_eval_dataset, build_train_dataset
from real20m.datasets.samplers import SampleKey, SourceBatchSampler

from .conftest import CharTokenizer, shard, write_text


def test_train_sample_from_query_groups(layout):
    dataset = build_train_dataset(layout)
    assert len(dataset) == 4 and dataset.grouped
    video = dataset[SampleKey(row=0, source=1, member=0, seed=11)]
    assert video["pid"] == 1000001 and video["source"] == "photo" and video["query"] == "red dress"
    assert video["frames"].shape == (4, 3, 16, 16) and video["issues"] == []
    assert video["frames"].dtype == torch.uint8  # raw pixels: the model normalises them
    goods = dataset[SampleKey(0, 0, 1, 11)]
    assert (goods["pid"], goods["title"], goods["frames"].shape) == (50002, "blue dress", (1, 3, 16, 16))
    assert torch.equal(dataset[SampleKey(0, 1, 0, 11)]["frames"], video["frames"])  # same key, same sample


def test_unreadable_item_replaced_by_same_source_item(layout):
    os.remove(shard(layout.goods_img_root, 50003, "50003.jpg"))
    dataset = build_train_dataset(layout)
    sample = dataset[SampleKey(1, 0, 0, 3)]
    assert sample["source"] == "goods" and sample["pid"] != 50003 and sample["query"] != "phone case"
    assert sample["issues"][:2] == [("corrupt_image", shard(layout.goods_img_root, 50003, "50003.jpg")),
                                    ("replaced_item", shard(layout.goods_img_root, 50003, "50003.jpg"))]
    assert dataset[SampleKey(1, 0, 0, 3)]["pid"] == sample["pid"]  # deterministic given the key


def test_item_file_train_format_detected(layout, tmp_path):
    items = tmp_path / "train_items.txt"
    items.write_text("50004\tgoods\tbag\tNone\tNone\n1000002\tphoto\tshoes\t"
                     "2/1000002_0.jpg,2/1000002_2.jpg\t2/1000002.txt\n")
    layout = dataclasses.replace(layout, train_file=str(items))
    dataset = build_train_dataset(layout)
    assert not dataset.grouped
    video = dataset[SampleKey(1, 1, 0, 0)]
    assert video["query"] == "shoes" and video["frames"].shape == (4, 3, 16, 16)
    assert list(dataset.training_texts()) == ["bag", "leather bag", "shoes", "title 1000002|body text|caption 1000002"]
    assert list(dataset.training_texts(limit=3)) == ["bag", "leather bag", "shoes"]


def test_training_texts_and_cheap_pickle(layout):
    dataset = build_train_dataset(layout)
    texts = list(dataset.training_texts())
    assert texts[:4] == ["red dress", "red dress", "blue dress", "title 1000001|body text|caption 1000001"]
    assert len(pickle.dumps(dataset)) < 20_000


def write_eval_file(tmp_path):
    path = tmp_path / "gallery.txt"
    path.write_text("1000004\tphoto\tq\tNone\tNone\n50001\tgoods\tq\tNone\tNone\n50002\tgoods\tq\tNone\tNone\n")
    return str(path)


def test_eval_dataset_file_order_and_blank_frames(layout, tmp_path):
    os.remove(shard(layout.goods_img_root, 50002, "50002.jpg"))
    dataset = build_eval_dataset(layout, write_eval_file(tmp_path))
    assert dataset.pids.tolist() == [1000004, 50001, 50002] and len(dataset) == 3
    first = dataset[0]
    assert "query" not in first and first["frames"].shape == (4, 3, 16, 16)
    assert torch.equal(first["frames"], dataset[0]["frames"])
    broken = dataset[2]
    assert broken["pid"] == 50002 and broken["title"] == "blue dress"
    assert [kind for kind, _ in broken["issues"]] == ["corrupt_image", "blank_frames"]
    with pytest.raises(AnnotationError, match="one-item-a-line"):
        build_eval_dataset(layout, layout.train_file)


def english_layout(layout):
    """The layout with the release's English variant: a 4th train column and <pid>_eng.txt texts."""
    with open(layout.train_file, "w", encoding="utf-8") as handle:
        handle.write("红色连衣裙\t50001,50002\t1000001\tred dress\n手机壳\t50003\tNone\tphone case\n")
    write_text(shard(layout.goods_text_root, 50001, "50001_eng.txt"), ["50001", "c", "b", "e", "English red", "d"])
    write_text(shard(layout.photo_text_root, 1000001, "1000001_eng.txt"), ["a caption", "a title", "a body"])
    return dataclasses.replace(layout, query_language="en")


def test_english_query_column_and_texts(layout, tmp_path):
    english = build_train_dataset(english_layout(layout))
    goods = english[SampleKey(0, 0, 0, 11)]
    assert (goods["query"], goods["title"], goods["issues"]) == ("red dress", "English red", [])
    assert english[SampleKey(0, 1, 0, 11)]["title"] == "a title|a body|a caption"
    # 50002 has no English text: an empty title, counted as a missing text file.
    missing = english[SampleKey(0, 0, 1, 11)]
    assert missing["title"] == "" and missing["issues"] == [("missing_text", shard(layout.goods_text_root, 50002,
                                                                                      "50002_eng.txt"))]
    assert next(english.training_texts()) == "red dress"
    evaluated = build_eval_dataset(dataclasses.replace(layout, query_language="en"), write_eval_file(tmp_path))
    assert evaluated[1]["title"] == "English red"
    # zh reads the same 4-field file as before the English column existed: Chinese query, <pid>.txt.
    chinese = build_train_dataset(dataclasses.replace(layout, query_language="zh"))
    assert chinese[SampleKey(0, 0, 0, 11)]["query"] == "红色连衣裙"
    assert chinese[SampleKey(0, 0, 0, 11)]["title"] == "red dress"


def test_collate_train_batch_shapes_and_padding(layout):
    dataset = build_train_dataset(layout)
    sampler = SourceBatchSampler(dataset, batch_size=2, seed=0, drop_last=False)
    collate = Collator(CharTokenizer(), max_query_len=6, max_title_len=5)
    for keys in sampler:
        batch = collate([dataset[key] for key in keys])
        size = len(keys)
        assert batch["pids"].shape == (size,) and batch["pids"].dtype == torch.long
        assert isinstance(batch["source"], str)
        assert batch["pixels"].shape[:2] == (size, 4 if batch["source"] == "photo" else 1)
        assert batch["query_ids"].shape == batch["query_mask"].shape and batch["query_ids"].shape[1] <= 6
        assert batch["title_ids"].shape[1] <= 5 and batch["title_mask"].dtype == torch.long
        queries = [dataset[key]["query"] for key in keys]
        assert torch.equal(batch["query_ids"], CharTokenizer()(queries, True, True, 6, "pt")["input_ids"])


def test_collate_pads_to_longest_and_repeats_single_frames():
    samples = [
        {"pid": 1, "source": "photo", "title": "abc", "frames": torch.rand(3, 3, 4, 4), "issues": [("x", "p")]},
        {"pid": 2, "source": "goods", "title": "a", "frames": torch.rand(1, 3, 4, 4), "issues": []},
    ]
    batch = Collator(CharTokenizer(), max_title_len=32)(samples)
    assert batch["source"] == ["photo", "goods"] and "query_ids" not in batch
    assert batch["title_ids"].shape == (2, 5)
    assert batch["title_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["pixels"].shape == (2, 3, 3, 4, 4)
    assert all(torch.equal(batch["pixels"][1, t], samples[1]["frames"][0]) for t in range(3))
    assert batch["issues"] == [("x", "p")]
    with pytest.raises(ValueError, match="cannot batch"):
        stack_frames([torch.rand(3, 3, 2, 2), torch.rand(2, 3, 2, 2)])


def test_dataloader_with_worker_carries_issues(layout):
    os.remove(shard(layout.photo_img_root, 1000001, "1000001_2.jpg"))  # probing stops at frame 2
    (open(shard(layout.photo_img_root, 1000001, "1000001_1.jpg"), "wb")).close()  # zero bytes
    dataset = build_train_dataset(layout)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[[SampleKey(0, 1, 0, 1)]], num_workers=1,
                                         collate_fn=Collator(CharTokenizer()))
    batch = next(iter(loader))
    assert batch["pixels"].shape == (1, 4, 3, 16, 16)
    assert ("corrupt_image", shard(layout.photo_img_root, 1000001, "1000001_1.jpg")) in batch["issues"]


def test_end_to_end_with_synthetic_generator(tmp_path):
    pytest.importorskip("real20m.datasets.synthetic")
    subprocess.run([sys.executable, "-m", "real20m.datasets.synthetic", "--out", str(tmp_path), "--seed", "0",
                    "--num-queries", "8", "--num-test-queries", "4", "--goods-per-query", "2",
                    "--videos-per-query", "2", "--frames-per-video", "3", "--image-size", "32"],
                   check=True, capture_output=True, timeout=120)

    from real20m.datasets.annotations import load_ground_truth
    from real20m.datasets.samplers import ClusterBatchSampler

    root, train, test = tmp_path / "Real400K", tmp_path / "train_file", tmp_path / "test_file"
    cfg = DataConfig(train_file=str(train / "train.txt"),
                     goods_img_root=str(root / "goods" / "images"), goods_text_root=str(root / "goods" / "text"),
                     photo_img_root=str(root / "video" / "images"), photo_text_root=str(root / "video" / "text"),
                     cluster_file=str(train / "cluster.txt"), hard_sample=True, clip_length=5, image_size=32,
                     batch_size=2, max_query_len=16, max_title_len=16, compat="default", text_aug=True)
    collate = Collator(CharTokenizer())
    for train_file in ("train.txt", "train_items.txt"):
        cfg = dataclasses.replace(cfg, train_file=str(train / train_file))
        dataset = build_train_dataset(cfg)
        sampler = ClusterBatchSampler(dataset, 2, seed=0)
        assert (sampler.row_clusters >= 0).all()  # every training query is in cluster.txt
        keys = next(iter(sampler))
        batch = collate([dataset[key] for key in keys])
        assert batch["pixels"].shape[0] == 2 and batch["pixels"].shape[2:] == (3, 32, 32) and batch["issues"] == []
    for test_file in ("goods_gallery.txt", "video_queries.txt"):
        items = build_eval_dataset(cfg, str(test / test_file))
        batch = collate([items[i] for i in range(len(items))])
        assert batch["pids"].tolist() == items.pids.tolist() and batch["issues"] == []
    truth = load_ground_truth(str(test / "eval_gt_video2goods.txt"))
    assert set(truth) <= set(build_eval_dataset(cfg, str(test / "video_queries.txt")).pids.tolist())
