"""Goods-category labels of training samples on a hand-made layout: goods by their text file's
second line, videos by their query's category in the cluster file, unknown ones ignored (-100) and
reported; batches without the feature exactly as before."""
import dataclasses

import pytest
import torch

from real20m.datasets.annotations import AnnotationError
from real20m.datasets.categories import read_category_names
from real20m.datasets.collate import Collator
from real20m.datasets.dataset import build_train_dataset
from real20m.datasets.samplers import SourceBatchSampler

from .conftest import CharTokenizer, shard, write_text

# Queries of conftest's train file: red dress, phone case, shoes, bag. "bag" is not clustered.
CLUSTERS = "red dress\tdress\tred dress\tred dress\nphone case\tphone\tcases\tphone case\nshoes\tshoes\tshoes\tshoes\n"
# Goods categories (text line 2); 50004's "bag" is not a category of the cluster file.
GOODS_CATEGORIES = {50001: "dress", 50002: "dress", 50003: "phone", 50004: "bag"}
NAMES = ("dress", "phone", "shoes")   # sorted: classes 0, 1, 2


@pytest.fixture
def labelled(layout, tmp_path):
    cluster_file = str(tmp_path / "cluster.txt")
    with open(cluster_file, "w", encoding="utf-8") as handle:
        handle.write(CLUSTERS)
    for pid, category in GOODS_CATEGORIES.items():
        write_text(shard(layout.goods_text_root, pid, f"{pid}.txt"), [str(pid), category, "b", "e", f"t{pid}", "d"])
    return dataclasses.replace(layout, cluster_file=cluster_file, category_labels=True,
                               category_names=read_category_names(cluster_file))


def test_the_vocabulary_is_the_sorted_category_column(labelled):
    assert labelled.category_names == NAMES


def test_goods_take_their_category_line_and_videos_their_querys_category(labelled):
    dataset = build_train_dataset(labelled)
    # (row, source, member): row 0 red dress (goods 50001, 50002; video 1000001), 1 phone case (goods
    # 50003), 2 shoes (videos 1000002, 1000003), 3 bag (goods 50004, video 1000004).
    labels = {dataset[key]["pid"]: dataset[key]["category"]
              for key in [(0, 0, 0, 1), (0, 0, 1, 1), (0, 1, 0, 1), (1, 0, 0, 1), (2, 1, 1, 1)]}
    assert labels == {50001: 0, 50002: 0, 1000001: 0, 50003: 1, 1000003: 2}


def test_unknown_categories_are_ignored_and_counted_as_issues(labelled):
    dataset = build_train_dataset(labelled)
    goods, video = dataset[(3, 0, 0, 1)], dataset[(3, 1, 0, 1)]   # "bag": no such category, no such query
    assert (goods["pid"], goods["category"], video["pid"], video["category"]) == (50004, -100, 1000004, -100)
    batch = Collator(CharTokenizer())([dataset[(0, 0, 0, 1)], goods])
    assert batch["category"].tolist() == [0, -100] and batch["category"].dtype == torch.int64
    assert batch["issues"] == [("unknown_category", shard(labelled.goods_text_root, 50004, "50004.txt"))]
    assert video["issues"] == [("unknown_category", "query 'bag'")]


def test_without_the_feature_batches_are_exactly_as_before(labelled, layout):
    plain, with_labels = build_train_dataset(layout), build_train_dataset(labelled)
    sampler = SourceBatchSampler(plain, batch_size=2, seed=0, drop_last=False)
    assert list(sampler) == list(SourceBatchSampler(with_labels, batch_size=2, seed=0, drop_last=False))
    collate = Collator(CharTokenizer())
    for keys in sampler:
        before = collate([plain[key] for key in keys])
        after = collate([with_labels[key] for key in keys])
        assert "category" not in before and after["category"].shape == (len(keys),)
        assert before.keys() == after.keys() - {"category"}
        for name, value in before.items():
            if torch.is_tensor(value):
                assert torch.equal(value, after[name]), name
            elif name != "issues":   # the labelled run also reports the unknown categories
                assert value == after[name], name


def test_a_missing_cluster_file_is_named(layout, tmp_path):
    missing = str(tmp_path / "train_file" / "cluster.txt")
    data = dataclasses.replace(layout, cluster_file=missing, category_labels=True)
    with pytest.raises(AnnotationError, match=f"^{missing}: not found; a weighted loss term reads goods categories"):
        build_train_dataset(data)


def test_an_empty_cluster_file_is_refused(tmp_path):
    empty = tmp_path / "cluster.txt"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match=f"^{empty}: lists no query"):
        read_category_names(str(empty))
