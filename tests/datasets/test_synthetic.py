import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from real20m.datasets.synthetic import generate, main

SMALL = dict(num_queries=12, num_test_queries=4, num_val_queries=2, goods_per_query=2, videos_per_query=3,
             frames_per_video=4, image_size=32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    summary = generate(root, seed=3, **SMALL)
    return root, summary


def tree_digest(root):
    """relative path -> sha256 of every file under root."""
    digests = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return digests


def read_rows(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f]


def doc_id(ref):
    return int(os.path.basename(ref).split(".")[0])


def query_id(ref):
    return int(os.path.basename(ref).split(".")[0].split("_")[0])


def test_same_seed_same_bytes_other_seed_differs(dataset, tmp_path):
    root, _ = dataset
    again = generate(tmp_path / "again", seed=3, **SMALL)
    other = generate(tmp_path / "other", seed=4, **SMALL)
    reference = tree_digest(root)
    assert tree_digest(again["out_dir"]) == reference
    other_digest = tree_digest(other["out_dir"])
    assert other_digest != reference
    assert other_digest["train_file/train.txt"] != reference["train_file/train.txt"]


def test_summary_counts_match_files(dataset):
    root, summary = dataset
    assert summary["train_queries"] == 12 and summary["test_queries"] == 4 and summary["val_queries"] == 2
    assert summary["goods"] == 18 * 2 and summary["videos"] == 18 * 3
    images = [f for f in tree_digest(root) if f.endswith(".jpg")]
    assert summary["images"] == len(images) == 36 + 54 * (1 + 4)


def test_train_items_have_images_and_text(dataset):
    root, _ = dataset
    data = root / "Real400K"
    items = read_rows(root / "train_file/train_items.txt")
    for pid, source, query, frames, text in items:
        image_root, text_root = (data / "goods/images", data / "goods/text") if source == "goods" else \
            (data / "video/images", data / "video/text")
        assert source in ("goods", "photo")
        paths = frames.split(",")
        assert len(paths) == (1 if source == "goods" else 4)
        assert all(p.startswith(f"{int(pid) % 50000}/{pid}") for p in paths)
        for p in paths:
            with Image.open(image_root / p) as image:
                assert image.size == (32, 32) and image.mode == "RGB"
        lines = (text_root / text).read_text(encoding="utf-8").split("\n")
        assert lines[-1] == ""  # every line, the last included, ends with a newline
        assert len(lines) - 1 == (6 if source == "goods" else 3)
        assert all(line for line in lines[:-1])  # missing fields are the word null, never empty
        if source == "goods":
            assert lines[0] == pid
            assert query[-2:] in lines[4] or query[-2:] in lines[1]  # the category is in the title
        else:
            assert (image_root / f"{int(pid) % 50000}/{pid}.jpg").exists()  # cover


def test_query_groups_match_items_and_ids_are_disjoint(dataset):
    root, _ = dataset
    groups = read_rows(root / "train_file/train.txt")
    items = read_rows(root / "train_file/train_items.txt")
    grouped = {(int(pid), query) for query, goods, videos in groups
               for pid in goods.split(",") + videos.split(",")}
    assert grouped == {(int(pid), query) for pid, _, query, _, _ in items}
    for query, goods, videos in groups:
        assert len(goods.split(",")) >= 2 and len(videos.split(",")) >= 2
    goods_ids = {int(p) for p, source, *_ in items if source == "goods"}
    video_ids = {int(p) for p, source, *_ in items if source == "photo"}
    assert max(goods_ids) < min(video_ids)
    assert len({pid % 50000 for pid in goods_ids}) > 1
    clusters = read_rows(root / "train_file/cluster.txt")
    assert [row[0] for row in clusters] == [row[0] for row in groups]
    assert all(len(row) == 4 and row[0].endswith(row[1]) for row in clusters)


def test_held_out_queries_are_new_combinations_of_seen_values(dataset):
    root, _ = dataset
    train_queries = {row[0] for row in read_rows(root / "train_file/train.txt")}
    test_items = read_rows(root / "test_file/video_queries.txt") + read_rows(root / "test_file/goods_gallery.txt")
    test_queries = {row[2] for row in test_items}
    assert len(test_queries) == 4 and not test_queries & train_queries
    train_text = "".join(train_queries)
    for query in test_queries:
        colour, pattern, material, category = query[:2], query[2:4], query[4:6], query[6:]
        assert all(value in train_text for value in (colour, pattern, material, category))
    all_queries = read_rows(root / "Real400K/query/queries.txt")
    assert sorted(q for q, split in all_queries if split == "test") == sorted(test_queries)


def test_ground_truth_links_every_test_item_to_its_query(dataset):
    root, _ = dataset
    videos = read_rows(root / "test_file/video_queries.txt")
    goods = read_rows(root / "test_file/goods_gallery.txt")
    query_of = {int(pid): query for pid, _, query, _, _ in videos + goods}
    for name, queries, docs in (("eval_gt_video2goods.txt", videos, goods),
                                ("eval_gt_goods2video.txt", goods, videos)):
        truth = {query_id(q): [doc_id(d) for d in refs.split(",")]
                 for q, refs in read_rows(root / "test_file" / name)}
        assert sorted(truth) == sorted(int(row[0]) for row in queries)
        for qid, doc_ids in truth.items():
            expected = [int(row[0]) for row in docs if row[2] == query_of[qid]]
            assert doc_ids == expected and len(doc_ids) >= 2
    for q, refs in read_rows(root / "test_file/eval_gt_video2goods.txt"):
        assert q.startswith("video/images/") and refs.startswith("goods/images/")
        assert (root / "Real400K" / q).exists()
        assert all((root / "Real400K" / ref).exists() for ref in refs.split(","))


def test_goods_and_video_frames_look_different(dataset):
    """Goods sit on a light plain backdrop; video frames are cluttered and change over time."""
    root, _ = dataset
    items = read_rows(root / "train_file/train_items.txt")
    goods = next(r for r in items if r[1] == "goods")
    video = next(r for r in items if r[1] == "photo")
    goods_pixels = np.asarray(Image.open(root / "Real400K/goods/images" / goods[3]), np.float32)
    assert goods_pixels[0, 0].mean() > 200  # corner = backdrop
    frames = [np.asarray(Image.open(root / "Real400K/video/images" / p), np.float32) for p in video[3].split(",")]
    assert np.abs(frames[0] - frames[-1]).mean() > 5


def test_cli_prints_summary_and_rejects_bad_sizes(tmp_path, capsys):
    summary = main(["--out", str(tmp_path / "cli"), "--seed", "1", "--num-queries", "4",
                    "--num-test-queries", "2", "--num-val-queries", "0", "--frames-per-video", "2",
                    "--image-size", "16"])
    assert "4 train / 2 test queries" in capsys.readouterr().out
    assert summary["videos"] == 18 and (tmp_path / "cli/test_file/eval_gt_goods2video.txt").exists()
    assert not (tmp_path / "cli/val_file").exists()
    with pytest.raises(ValueError, match="num_queries"):
        generate(tmp_path / "bad", num_queries=0)
    with pytest.raises(ValueError, match="frames_per_video"):
        generate(tmp_path / "bad", frames_per_video=0)
    with pytest.raises(TypeError, match="unknown"):
        generate(tmp_path / "bad", num_querys=3)


def test_query_tasks_parse_with_the_project_readers_and_point_into_the_galleries(dataset):
    from real20m.datasets.annotations import load_ground_truth, load_items
    from real20m.retrieval import read_queries
    root, summary = dataset
    qids, texts = read_queries(root / "test_file/queries.txt")
    assert len(qids) == summary["test_queries"] == 4
    # A qid is the query's line number in Real400K/query/queries.txt (training queries first).
    listed = [query for query, _ in read_rows(root / "Real400K/query/queries.txt")]
    assert [listed[qid] for qid in qids] == texts
    for task, gallery_name in (("query2goods", "goods_gallery.txt"), ("query2video", "video_queries.txt")):
        truth = load_ground_truth(root / f"test_file/eval_gt_{task}.txt")
        gallery = load_items(root / "test_file" / gallery_name)
        query_of = dict(zip(gallery.pids.tolist(), (gallery.query(row) for row in range(len(gallery)))))
        assert sorted(truth) == sorted(qids.tolist())
        text_of = dict(zip(qids.tolist(), texts))
        for qid, docs in truth.items():
            assert docs and all(doc in query_of for doc in docs)
            assert docs == [pid for pid, query in query_of.items() if query == text_of[qid]]
        for _, refs in read_rows(root / f"test_file/eval_gt_{task}.txt"):
            assert all((root / "Real400K" / ref).exists() for ref in refs.split(","))


@pytest.mark.parametrize("style", ["products", "household"])
def test_english_variant_adds_files_and_a_column_and_changes_nothing_else(tmp_path, style):
    from real20m.datasets.annotations import load_query_groups
    default = generate(tmp_path / "default", seed=3, style=style, **SMALL)["out_dir"]
    english = main(["--out", str(tmp_path / "english"), "--seed", "3", "--style", style, "--english",
                    *[f"--{name.replace('_', '-')}={value}" for name, value in SMALL.items()]])["out_dir"]
    plain, added = tree_digest(default), tree_digest(english)
    assert {name: added[name] for name in plain if name != "train_file/train.txt"} == \
        {name: digest for name, digest in plain.items() if name != "train_file/train.txt"}
    rows, english_rows = read_rows(os.path.join(default, "train_file/train.txt")), \
        read_rows(os.path.join(english, "train_file/train.txt"))
    assert [row[:3] for row in english_rows] == rows and all(len(row) == 4 for row in english_rows)
    # An English text beside every item text, with its line layout, in English words only.
    texts = [name for name in plain if "/text/" in name]
    assert sorted(set(added) - set(plain)) == sorted(name.replace(".txt", "_eng.txt") for name in texts)
    for name in texts:
        lines = read_rows(os.path.join(english, name.replace(".txt", "_eng.txt")))
        assert len(lines) == len(read_rows(os.path.join(default, name))) and all(
            line[0].isascii() for line in lines)
    queries = [row[3] for row in english_rows]
    assert all(query.isascii() and " " in query for query in queries) and len(set(queries)) == len(queries)
    groups = load_query_groups(os.path.join(english, "train_file/train.txt"), "en")
    assert [groups.query(row) for row in range(len(groups))] == queries
    # Deterministic from the seed.
    assert tree_digest(generate(tmp_path / "again", seed=3, style=style, english=True, **SMALL)["out_dir"]) == added
