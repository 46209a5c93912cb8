import numpy as np
import pytest

from real20m.evaluate.search import iter_search, search


def _reference(queries, gallery, k):
    scores = queries.astype(np.float64) @ gallery.astype(np.float64).T
    order = np.lexsort((np.broadcast_to(np.arange(len(gallery)), scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), order


def _normalised(n, dim, rng):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_chunked_exact_search_equals_brute_force():
    rng = np.random.default_rng(0)
    gallery, queries = _normalised(2000, 16, rng), _normalised(40, 16, rng)
    scores, indices = search(queries, gallery, 50, chunk_size=300, query_chunk=7, show_progress=False)
    ref_scores, ref_indices = _reference(queries, gallery, 50)
    assert scores.dtype == np.float32 and indices.dtype == np.int64 and indices.shape == (40, 50)
    assert np.array_equal(indices, ref_indices)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_float16_memmap_gallery_with_ties(tmp_path):
    # Small integers: float16-exact, dot products exact in float32, many exact ties.
    rng = np.random.default_rng(1)
    gallery = rng.integers(-2, 3, (1500, 8)).astype(np.float16)
    queries = rng.integers(-2, 3, (30, 8)).astype(np.float32)
    path = tmp_path / "gallery.npy"
    np.save(path, gallery)
    mapped = np.load(path, mmap_mode="r")
    scores, indices = search(queries, mapped, 40, chunk_size=256, query_chunk=11, show_progress=False)
    ref_scores, ref_indices = _reference(queries, gallery.astype(np.float32), 40)
    assert np.array_equal(scores, ref_scores.astype(np.float32))
    assert np.array_equal(indices, ref_indices)


def test_ties_at_the_cut_off_break_by_gallery_index():
    rng = np.random.default_rng(1)
    gallery = rng.integers(-2, 3, (1500, 8)).astype(np.float32)   # in memory: one fused faiss pass
    queries = rng.integers(-2, 3, (30, 8)).astype(np.float32)
    for k in (40, 200):
        scores, indices = search(queries, gallery, k, show_progress=False)
        ref_scores, ref_indices = _reference(queries, gallery, k)
        assert np.array_equal(indices, ref_indices) and np.array_equal(scores, ref_scores.astype(np.float32))


def test_ivf_with_all_lists_probed_is_exact():
    rng = np.random.default_rng(2)
    gallery, queries = _normalised(5000, 32, rng), _normalised(50, 32, rng)
    _, indices = search(queries, gallery, 20, index_factory="IVF16,Flat", nprobe=16, show_progress=False)
    assert np.array_equal(indices, _reference(queries, gallery, 20)[1])


def test_hnsw_runs_and_finds_itself():
    rng = np.random.default_rng(3)
    gallery = _normalised(1000, 16, rng)
    scores, indices = search(gallery[:20], gallery, 5, index_factory="HNSW32", params="efSearch=64",
                             show_progress=False)
    assert indices.shape == (20, 5)
    assert (indices[:, 0] == np.arange(20)).mean() >= 0.95


def test_k_larger_than_gallery_is_clamped_with_warning():
    rng = np.random.default_rng(4)
    gallery, queries = _normalised(10, 4, rng), _normalised(3, 4, rng)
    with pytest.warns(UserWarning, match="k=50 is larger than the gallery"):
        scores, indices = search(queries, gallery, 50, show_progress=False)
    assert indices.shape == (3, 10) and sorted(indices[0].tolist()) == list(range(10))


def test_iter_search_yields_query_chunks():
    rng = np.random.default_rng(5)
    gallery, queries = _normalised(100, 4, rng), _normalised(25, 4, rng)
    starts = [start for start, _, _ in iter_search(queries, gallery, 3, query_chunk=10, show_progress=False)]
    assert starts == [0, 10, 20]



def test_exact_search_at_k_1000_matches_float64_reference():
    rng = np.random.default_rng(7)
    gallery, queries = _normalised(20000, 32, rng), _normalised(300, 32, rng)
    scores, indices = search(queries, gallery, 1000, show_progress=False)
    ref_scores, ref_indices = _reference(queries, gallery, 1000)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert (indices == ref_indices).mean() > 0.99   # only float32 near-ties may swap places
    chunked = search(queries, gallery, 1000, chunk_size=3000, query_chunk=77, show_progress=False)
    assert np.array_equal(chunked[1], indices) and np.array_equal(chunked[0], scores)
