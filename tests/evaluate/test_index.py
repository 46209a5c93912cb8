import json
import os

import numpy as np
import pytest

from real20m.evaluate.cli import main, parse_request, run_evaluation
from real20m.evaluate.faiss_backend import SearchDevice
from real20m.evaluate.feature_io import load_features, read_rows, release_mapped_pages, write_feature_folder
from real20m.evaluate.search import search, search_all
from real20m.evaluate.search_config import SearchConfig
from real20m.evaluate.searchers import IndexFileError, SavedGallery, describe_gallery, open_searcher
from real20m.evaluate.searchers.sharded import ShardedIndex, shard_bounds
from tests.evaluate.feature_folders import write_one_shard_folder

N_GALLERY, N_QUERIES, DIM = 50_000, 200, 32
CPU = SearchDevice(0)


def _config(**values):
    return SearchConfig(show_progress=False, **values)


def _clustered(n, rng, centers):
    feats = centers[rng.integers(0, len(centers), n)] + 0.5 * rng.standard_normal((n, DIM), dtype=np.float32)
    return (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((100, DIM), dtype=np.float32)
    return _clustered(N_QUERIES, rng, centers), _clustered(N_GALLERY, rng, centers)


@pytest.fixture(scope="module")
def float16_folder(features, tmp_path_factory):
    """The gallery as a float16 shard folder in three unequal rank shards, and its in-memory twin."""
    _, gallery = features
    folder = str(tmp_path_factory.mktemp("gallery"))
    ids = np.arange(N_GALLERY, dtype=np.int64) * 7 + 3
    write_one_shard_folder(folder, [(ids[start:stop], gallery[start:stop])
                                     for start, stop in [(0, 10_000), (10_000, 31_000), (31_000, N_GALLERY)]], "float16")
    return folder, gallery.astype(np.float16).astype(np.float32)


def test_shard_bounds_cover_every_row_once():
    assert shard_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert shard_bounds(5, 1) == [(0, 5)]
    with pytest.raises(ValueError, match="cannot split a gallery of 2 items into 3 shards"):
        shard_bounds(2, 3)


def test_ivf_probing_every_list_equals_exact_search(features):
    queries, gallery = features
    exact_scores, exact_indices = search(queries, gallery, 100, _config())
    scores, indices = search(queries, gallery, 100, _config(index="IVF64,Flat", nprobe=64))
    assert np.array_equal(indices, exact_indices)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)


def test_fewer_probes_lose_some_recall(features):
    queries, gallery = features
    _, exact_indices = search(queries, gallery, 100, _config())
    _, indices = search(queries, gallery, 100, _config(index="IVF64,Flat", nprobe=1))
    recall = np.mean([len(np.intersect1d(a, b)) / 100 for a, b in zip(indices, exact_indices)])
    assert 0.2 < recall < 1.0   # a real approximation, not exact search under another name


@pytest.mark.parametrize("factory,nprobe", [("IVF64,SQ8", 8), ("IVF64,Flat", 4)])
def test_sharded_search_equals_unsharded(features, factory, nprobe):
    queries, gallery = features
    whole = search(queries, gallery, 100, _config(index=factory, nprobe=nprobe))
    sharded = search(queries, gallery, 100, _config(index=factory, nprobe=nprobe, shards=3))
    assert np.array_equal(sharded[1], whole[1]) and np.array_equal(sharded[0], whole[0])
    assert sharded[1].max() >= 2 * N_GALLERY // 3   # ids are global gallery rows, not per-shard rows


def test_memory_mapped_shards_give_the_in_memory_results(float16_folder, features):
    folder, gallery_in_memory = float16_folder
    queries, _ = features
    mapped = load_features(folder).feats
    for factory, nprobe in ((None, None), ("IVF64,SQ8", 8)):
        config = _config(index=factory, nprobe=nprobe, chunk_size=7_000)
        from_disk = search(queries, mapped, 100, config)
        in_memory = search(queries, gallery_in_memory, 100, config)
        assert np.array_equal(from_disk[1], in_memory[1]) and np.array_equal(from_disk[0], in_memory[0])


def test_saved_index_searches_like_the_built_one(features, tmp_path):
    queries, gallery = features
    description = describe_gallery(np.arange(N_GALLERY))
    saving = _config(index="IVF64,PQ8", nprobe=8, shards=2, save_index=str(tmp_path / "index"))
    built = search_all(queries, open_searcher(gallery, saving, gallery_description=description), 50)
    assert sorted(os.listdir(tmp_path / "index")) == ["meta.json", "shard0.faiss", "shard1.faiss"]
    loading = _config(nprobe=8, load_index=str(tmp_path / "index"))
    loaded = search_all(queries, open_searcher(gallery, loading, gallery_description=description), 50)
    assert np.array_equal(loaded[1], built[1]) and np.array_equal(loaded[0], built[0])


def test_saved_index_is_refused_for_another_gallery_or_sharding(features, tmp_path):
    _, gallery = features
    folder = str(tmp_path / "index")
    ShardedIndex.build(gallery[:5000], _config(index="IVF16,Flat", shards=2), CPU).save(
        folder, describe_gallery(np.arange(5000)))
    this_gallery = SavedGallery(DIM, describe_gallery(np.arange(5000)))
    with pytest.raises(IndexFileError, match=r"index: the saved index has gallery .*build it again"):
        ShardedIndex.load(folder, _config(), CPU, SavedGallery(DIM, describe_gallery(np.arange(1, 5001))))
    with pytest.raises(IndexFileError, match="the saved index has dim 32, but this evaluation has 64"):
        ShardedIndex.load(folder, _config(), CPU, SavedGallery(64, this_gallery.description))
    with pytest.raises(IndexFileError, match="has 2 shards, --shards asks for 3"):
        ShardedIndex.load(folder, _config(shards=3), CPU, this_gallery)
    shard = os.path.join(folder, "shard1.faiss")
    with open(shard, "r+b") as f:
        f.truncate(100)
    with pytest.raises(IndexFileError, match=r"shard1.faiss: cannot read the Faiss index"):
        ShardedIndex.load(folder, _config(), CPU, this_gallery)
    os.remove(os.path.join(folder, "meta.json"))
    with pytest.raises(IndexFileError, match="meta.json: cannot read the index description"):
        ShardedIndex.load(folder, _config(), CPU, this_gallery)


def test_shards_and_saving_need_an_approximate_index(features, capsys):
    queries, gallery = features
    with pytest.raises(ValueError, match="--shards, --save_index and --load_index need an approximate --index"):
        search(queries, gallery, 10, _config(shards=2))
    with pytest.raises(SystemExit) as exit_info:
        main(["--query_features", "q", "--gallery_features", "g", "--gt_file", "gt", "--output_dir", "o",
              "--shards", "4"])
    assert exit_info.value.code == 2
    assert "--shards and --save_index need an approximate --index" in capsys.readouterr().err


def _resident_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_reading_a_mapped_gallery_releases_its_pages(tmp_path):
    path = str(tmp_path / "big.npy")
    np.save(path, np.ones((32_768, 1024), np.float16))   # 64 MiB
    mapped = np.load(path, mmap_mode="r")
    before = _resident_kib()
    int(mapped.view(np.uint16).sum(dtype=np.uint64))   # reads every page, allocates nothing big
    touched = _resident_kib()
    release_mapped_pages(mapped)
    assert touched - before > 48 * 1024 and _resident_kib() - before < 8 * 1024
    rows = read_rows(mapped, 100, 200)
    assert not np.shares_memory(rows, mapped) and rows.dtype == np.float32 and np.all(rows == 1)


def test_cli_sharded_ivf_with_saved_index(float16_folder, features, tmp_path):
    folder, gallery = float16_folder
    queries, _ = features
    nearest = search(queries, gallery, 1, _config())[1][:, 0]   # each query's GT: its true top-1
    query_folder = str(tmp_path / "queries")
    write_feature_folder(query_folder, [(np.arange(N_QUERIES, dtype=np.int64), queries)], {"test": "queries"})
    gt = tmp_path / "gt.txt"
    gt.write_text("".join(f"video/images/{q}/{q}_0.jpg\tgoods/images/{7 * row + 3}.jpg\n"
                          for q, row in enumerate(nearest.tolist())))
    common = ["--query_features", query_folder, "--gallery_features", folder, "--gt_file", str(gt), "--quiet",
              "--topk", "100", "--nprobe", "8"]
    built = run_evaluation(parse_request(
        common + ["--output_dir", str(tmp_path / "a"), "--index", "IVF64,SQ8", "--shards", "2",
                  "--save_index", str(tmp_path / "index")]))
    loaded = run_evaluation(parse_request(
        common + ["--output_dir", str(tmp_path / "b"), "--load_index", str(tmp_path / "index")]))
    recalls = {key: value for key, value in built.items() if key.startswith("recall@")}
    assert recalls == {key: value for key, value in loaded.items() if key.startswith("recall@")}
    assert built["num_gallery"] == N_GALLERY and built["gt_docs_missing_from_gallery"] == 0
    assert recalls["recall@100"] > 0.9
    saved = json.load(open(tmp_path / "b" / "metrics.json"))["search"]
    assert saved["loaded_index"] == str(tmp_path / "index") and saved["index"] == "IVF64,SQ8"
