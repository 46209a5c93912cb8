"""A search backend registered here, in the test file alone, runs through evaluation.py and Retriever."""
import json
import os

import numpy as np
import pytest

from real20m.datasets.annotations import load_items
from real20m.evaluate.cli import main as evaluation_main
from real20m.evaluate.feature_io import read_rows, write_feature_folder, write_json_atomic
from real20m.evaluate.searchers import IndexFileError, SEARCH_BACKENDS, read_index_meta, register_search_backend
from real20m.retrieval import Retriever
from tests.evaluate.test_cli import _features

NAME = "numpy-brute-force"
TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs",
                    "tiny.yaml")


@register_search_backend(NAME)
class NumpyBruteForce:
    """Every gallery row scored in float64 with numpy; an index folder is the features as .npy."""

    index_format = "test-numpy-brute-force-v1"

    def __init__(self, feats):
        self.feats = feats
        self.size, self.dim = feats.shape

    @classmethod
    def build(cls, gallery, config, device):
        return cls(read_rows(gallery, 0, len(gallery)))

    @classmethod
    def load(cls, folder, config, device, expected):
        if read_index_meta(folder)["gallery"] != expected.description:
            raise IndexFileError(f"{folder}: built for another gallery")
        return cls(np.load(os.path.join(folder, "feats.npy")))

    def search(self, queries, k):
        scores = queries.astype(np.float64) @ self.feats.astype(np.float64).T
        rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, rows, 1).astype(np.float32), rows

    def describe(self):
        return {"index": NAME, "device": "cpu", "num_gpus": 0, "device_note": None, "faiss_version": None,
                "faiss_build": None}

    def save(self, folder, gallery_description):
        os.makedirs(folder, exist_ok=True)
        np.save(os.path.join(folder, "feats.npy"), self.feats)
        write_json_atomic(os.path.join(folder, "meta.json"), {"format": self.index_format,
                                                              "gallery": gallery_description})


def _evaluate(tmp_path, name, *flags):
    out = tmp_path / name
    evaluation_main(_features(tmp_path) + ["--output_dir", str(out), "--use_gpu", "never", *flags])
    return json.load(open(out / "metrics.json"))


def _scores(metrics):
    return {key: value for key, value in metrics.items() if key not in ("search", "timings")}


def test_a_registered_backend_runs_through_evaluation_saves_and_loads_its_index(tmp_path):
    assert SEARCH_BACKENDS[NAME] is NumpyBruteForce
    exact = _evaluate(tmp_path, "exact")
    index = str(tmp_path / "index")
    built = _evaluate(tmp_path, "built", "--search_backend", NAME, "--save_index", index)
    loaded = _evaluate(tmp_path, "loaded", "--load_index", index)   # the folder's meta.json picks the backend
    assert exact["search"]["index"] == "Flat"
    assert built["search"]["index"] == loaded["search"]["index"] == NAME
    assert built["search"]["faiss_version"] is None and loaded["search"]["loaded_index"] == index
    assert _scores(built) == _scores(exact) == _scores(loaded)
    assert exact["recall@1"] == 1.0   # each query is its own gallery row: a real, non-trivial figure


@pytest.fixture(scope="module")
def retriever(tiny_data_root):
    return Retriever.from_checkpoint("init", config=TINY, data=tiny_data_root)


def test_a_registered_backend_serves_retriever_searches_like_exact_search(retriever, tiny_data_root, tmp_path):
    items = os.path.join(tiny_data_root, "test_file", "goods_gallery.txt")
    ids = load_items(items).pids.astype(np.int64)
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((len(ids), retriever.dim)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    gallery = str(tmp_path / "gallery")
    write_feature_folder(gallery, [(ids, feats)], {"test": "gallery"})
    queries = feats[:3] + 0.1 * rng.standard_normal((3, retriever.dim)).astype(np.float32)

    def search(**search_keywords):
        retriever.load_gallery(gallery, items=items, **search_keywords)
        return retriever.search(queries, k=4)

    def same_hits(got, want):
        assert [[(hit.pid, hit.title) for hit in row] for row in got] == \
            [[(hit.pid, hit.title) for hit in row] for row in want]
        np.testing.assert_allclose([[hit.score for hit in row] for row in got],
                                   [[hit.score for hit in row] for row in want], atol=1e-5)

    exact = search()
    assert [row[0].pid for row in exact] == ids[:3].tolist() and all(row[0].title for row in exact)
    same_hits(search(search_backend=NAME), exact)
    # A folder the backend saved through evaluation.py is searched by it again: meta.json names its format.
    gt = tmp_path / "gt.txt"
    gt.write_text(f"video/images/1/1_0.jpg\tgoods/images/1/{ids[0]}.jpg\n")
    write_feature_folder(str(tmp_path / "queries"), [(np.array([1], np.int64), queries[:1])], {"test": "queries"})
    evaluation_main(["--query_features", str(tmp_path / "queries"), "--gallery_features", gallery, "--quiet",
                     "--gt_file", str(gt), "--output_dir", str(tmp_path / "eval"), "--search_backend", NAME,
                     "--save_index", str(tmp_path / "index"), "--use_gpu", "never"])
    assert sorted(os.listdir(tmp_path / "index")) == ["feats.npy", "meta.json"]
    same_hits(search_from(retriever, str(tmp_path / "index"), items, queries), exact)


def search_from(retriever, gallery, items, queries):
    retriever.load_gallery(gallery, items=items)
    return retriever.search(queries, k=4)
