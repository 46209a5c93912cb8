import logging
import threading
import time

import faiss
import numpy as np
import pytest

from real20m.evaluate.faiss_backend import SearchDeviceError
from real20m.evaluate.search import iter_search, search
from real20m.evaluate.search_config import SearchConfig
from real20m.evaluate.searchers import open_searcher
from real20m.evaluate.searchers.exact import ExactSearcher, exact_knn, stream_topk
from real20m.evaluate.searchers.topk import sort_results


QUIET = SearchConfig(show_progress=False)


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
    scores, indices = search(queries, gallery, 50, SearchConfig(chunk_size=300, query_chunk=7, show_progress=False))
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
    scores, indices = search(queries, mapped, 40, SearchConfig(chunk_size=256, query_chunk=11, show_progress=False))
    ref_scores, ref_indices = _reference(queries, gallery.astype(np.float32), 40)
    assert np.array_equal(scores, ref_scores.astype(np.float32))
    assert np.array_equal(indices, ref_indices)


def test_ties_at_the_cut_off_break_by_gallery_index():
    rng = np.random.default_rng(1)
    gallery = rng.integers(-2, 3, (1500, 8)).astype(np.float32)   # in memory: one fused faiss pass
    queries = rng.integers(-2, 3, (30, 8)).astype(np.float32)
    for k in (40, 200):
        scores, indices = search(queries, gallery, k, QUIET)
        ref_scores, ref_indices = _reference(queries, gallery, k)
        assert np.array_equal(indices, ref_indices) and np.array_equal(scores, ref_scores.astype(np.float32))


def test_ivf_with_all_lists_probed_is_exact():
    rng = np.random.default_rng(2)
    gallery, queries = _normalised(5000, 32, rng), _normalised(50, 32, rng)
    _, indices = search(queries, gallery, 20, SearchConfig(index="IVF16,Flat", nprobe=16, show_progress=False))
    assert np.array_equal(indices, _reference(queries, gallery, 20)[1])


def test_hnsw_runs_and_finds_itself():
    rng = np.random.default_rng(3)
    gallery = _normalised(1000, 16, rng)
    scores, indices = search(gallery[:20], gallery, 5,
                             SearchConfig(index="HNSW32", params="efSearch=64", show_progress=False))
    assert indices.shape == (20, 5)
    assert (indices[:, 0] == np.arange(20)).mean() >= 0.95


def test_k_larger_than_gallery_is_clamped_with_one_info_line(caplog):
    rng = np.random.default_rng(4)
    gallery, queries = _normalised(10, 4, rng), _normalised(3, 4, rng)
    with caplog.at_level(logging.INFO, logger="real20m.evaluate.search"):
        scores, indices = search(queries, gallery, 50, QUIET)
    assert [record.getMessage() for record in caplog.records if record.name == "real20m.evaluate.search"] == [
        "k=50 is larger than the gallery (10 items); using k=10"]
    assert indices.shape == (3, 10) and sorted(indices[0].tolist()) == list(range(10))


def test_iter_search_yields_query_chunks():
    rng = np.random.default_rng(5)
    gallery, queries = _normalised(100, 4, rng), _normalised(25, 4, rng)
    searcher = open_searcher(gallery, QUIET)
    starts = [start for start, _, _ in iter_search(queries, searcher, 3, query_chunk=10, show_progress=False)]
    assert starts == [0, 10, 20]



def test_exact_search_at_k_1000_matches_float64_reference():
    rng = np.random.default_rng(7)
    gallery, queries = _normalised(20000, 32, rng), _normalised(300, 32, rng)
    scores, indices = search(queries, gallery, 1000, QUIET)
    ref_scores, ref_indices = _reference(queries, gallery, 1000)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert (indices == ref_indices).mean() > 0.99   # only float32 near-ties may swap places
    chunked = search(queries, gallery, 1000, SearchConfig(chunk_size=3000, query_chunk=77, show_progress=False))
    assert np.array_equal(chunked[1], indices) and np.array_equal(chunked[0], scores)


# ---------------------------------------------------------------- streaming and the GPU path

def _small_integers(shape, rng):
    """float32 small integers: every dot product is exact, so ties are exact ties."""
    return rng.integers(-2, 3, shape).astype(np.float32)


def _numpy_block_knn(queries, rows, k, worker=0):
    """A per-block search with no Faiss at all: float64 brute force, ties by row index."""
    scores, order = _reference(queries, rows, k)
    return scores.astype(np.float32), order


def _arbitrary_ties_knn(queries, rows, depth):
    """Like a Faiss heap: the best ``depth`` rows, but among tied scores the highest index first,
    so a cut-off inside a tie keeps the wrong members unless ``exact_knn`` repairs it."""
    scores = queries @ rows.T
    order = np.lexsort((-np.broadcast_to(np.arange(len(rows)), scores.shape), -scores), axis=1)[:, :depth]
    return np.take_along_axis(scores, order, 1), order


@pytest.mark.parametrize("chunk_size", [7, 64, 1000])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_stream_topk_merge_equals_brute_force(chunk_size, workers):
    rng = np.random.default_rng(10)
    gallery, queries = _small_integers((600, 6), rng), _small_integers((25, 6), rng)
    k = 30   # larger than the 7-row blocks: short per-block lists merge too
    scores, indices = stream_topk(queries, gallery, k, chunk_size, _numpy_block_knn, workers)
    ref_scores, ref_indices = _reference(queries, gallery, k)
    assert np.array_equal(indices, ref_indices) and np.array_equal(scores, ref_scores.astype(np.float32))


def test_stream_topk_deals_blocks_round_robin_one_at_a_time_per_worker():
    rng = np.random.default_rng(11)
    gallery, queries = _normalised(1000, 8, rng), _normalised(5, 8, rng)
    lock, calls, active, peak = threading.Lock(), [], {}, {}

    def watching_knn(q, rows, k, worker):
        with lock:
            active[worker] = active.get(worker, 0) + 1
            peak[worker] = max(peak.get(worker, 0), active[worker])
            calls.append((worker, rows[0].tobytes(), len(rows)))
        time.sleep(0.01)   # let the other workers' threads overlap with this one
        try:
            return _numpy_block_knn(q, rows, k)
        finally:
            with lock:
                active[worker] -= 1

    stream_topk(queries, gallery, 10, 100, watching_knn, workers=3)
    first_rows = {gallery[start].tobytes(): start // 100 for start in range(0, 1000, 100)}
    assert sorted(first_rows[row] for _, row, _ in calls) == list(range(10))   # each block exactly once
    assert all(first_rows[row] % 3 == worker for worker, row, _ in calls)
    assert all(length <= 100 for _, _, length in calls)
    assert peak == {0: 1, 1: 1, 2: 1}


def test_exact_knn_repairs_an_arbitrary_choice_among_ties_at_the_cut_off():
    rng = np.random.default_rng(12)
    gallery, queries = _small_integers((500, 5), rng), _small_integers((40, 5), rng)
    for k in (1, 17, 60):
        scores, indices = exact_knn(queries, gallery, k, knn=_arbitrary_ties_knn)
        scores, indices = sort_results(scores, indices.astype(np.int64))
        ref_scores, ref_indices = _reference(queries, gallery, k)
        assert np.array_equal(indices, ref_indices) and np.array_equal(scores, ref_scores.astype(np.float32))
    # Streamed with the same repair per block (what GpuBlockKnn does with knn_gpu): still the reference.
    def block_knn(q, rows, k, worker):
        return exact_knn(q, rows, k, knn=_arbitrary_ties_knn)
    scores, indices = stream_topk(queries, gallery, 60, 45, block_knn, workers=2)
    assert np.array_equal(indices, _reference(queries, gallery, 60)[1])


def test_searcher_describes_index_device_and_faiss_build():
    rng = np.random.default_rng(13)
    gallery = _normalised(50, 4, rng)
    info = open_searcher(gallery, SearchConfig(use_gpu="never", show_progress=False)).describe()
    assert info == {"index": "Flat", "device": "cpu", "num_gpus": 0, "device_note": None,
                    "faiss_version": faiss.__version__,
                    "faiss_build": "gpu" if hasattr(faiss, "StandardGpuResources") else "cpu"}
    info = open_searcher(gallery, SearchConfig(index="IVF2,Flat", nprobe=2, use_gpu="never", train_size=50,
                                               show_progress=False)).describe()
    assert info["index"] == "IVF2,Flat" and info["device"] == "cpu"


def _faiss_gpus():
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


needs_gpu_faiss = pytest.mark.skipif(
    _faiss_gpus() == 0, reason="needs the GPU build of Faiss (pip install -e '.[gpu]') and a visible GPU")


@pytest.mark.skipif(_faiss_gpus() > 0, reason="this machine can search on a GPU")
def test_use_gpu_always_without_a_gpu_faiss_fails_clearly():
    rng = np.random.default_rng(14)
    gallery = _normalised(20, 4, rng)
    for use_gpu in ("always", True):
        with pytest.raises(SearchDeviceError, match="--use_gpu always: .*faiss-gpu-cu12|sees no GPU"):
            search(gallery[:2], gallery, 3, SearchConfig(use_gpu=use_gpu, show_progress=False))


@needs_gpu_faiss
def test_gpu_exact_search_streams_one_block_per_gpu_and_equals_cpu():
    import torch

    rng = np.random.default_rng(15)
    block, n_blocks, dim, k = 65536, 16, 256, 100   # 64 MiB float32 blocks, a 1 GiB gallery
    gallery = _normalised(block * n_blocks, dim, rng)
    queries = _normalised(256, dim, rng)
    searcher = ExactSearcher(gallery, chunk_size=block, n_gpus=1)
    # No pre-reserved temporary memory: every block Faiss copies to the GPU is a visible allocation.
    searcher.block_knn.resources[0].setTempMemory(0)
    gpu_knn, lock, active, peak, sizes = searcher.block_knn, threading.Lock(), [0], [0], []

    def watching_knn(q, rows, depth, worker):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            sizes.append(len(rows))
        try:
            return gpu_knn(q, rows, depth, worker)
        finally:
            with lock:
                active[0] -= 1

    searcher.block_knn = watching_knn
    searcher.search(queries[:8], k)   # warm-up: CUDA context, cuBLAS handles
    sizes.clear()
    sample_memory = torch.cuda.is_available()
    used, stop = [], threading.Event()

    def sampler():
        while not stop.is_set():
            free, total = torch.cuda.mem_get_info(0)
            used.append(total - free)
            time.sleep(0.0002)   # leave the GIL to the search between samples

    if sample_memory:
        baseline = torch.cuda.mem_get_info(0)[1] - torch.cuda.mem_get_info(0)[0]
        thread = threading.Thread(target=sampler)
        thread.start()
    try:
        gpu_scores, gpu_ids = sort_results(*searcher.search(queries, k))
    finally:
        stop.set()
        if sample_memory:
            thread.join()
    assert peak[0] == 1 and sizes == [block] * n_blocks
    if sample_memory:
        gallery_bytes = gallery.nbytes
        assert max(used) - baseline < gallery_bytes / 4, (max(used) - baseline, gallery_bytes)
    cpu_scores, cpu_ids = search(queries, gallery, k, SearchConfig(chunk_size=block, use_gpu="never",
                                                                   show_progress=False))
    np.testing.assert_allclose(gpu_scores, cpu_scores, atol=1e-4)
    differ = gpu_ids != cpu_ids   # only float32 near-ties may swap: their exact scores agree
    exact = np.einsum("qd,qkd->qk", queries.astype(np.float64), gallery[gpu_ids].astype(np.float64))
    exact_cpu = np.einsum("qd,qkd->qk", queries.astype(np.float64), gallery[cpu_ids].astype(np.float64))
    assert np.abs(exact - exact_cpu)[differ].max(initial=0) < 1e-5


@needs_gpu_faiss
def test_gpu_exact_search_resolves_ties_like_the_cpu():
    rng = np.random.default_rng(16)
    gallery, queries = _small_integers((50000, 16), rng), _small_integers((64, 16), rng)
    gpu_config = SearchConfig(chunk_size=7000, use_gpu="always", show_progress=False)
    info = open_searcher(gallery, gpu_config).describe()
    gpu = search(queries, gallery, 50, gpu_config)
    cpu = search(queries, gallery, 50, SearchConfig(chunk_size=7000, use_gpu="never", show_progress=False))
    n_blocks = 8   # 50000 rows in chunks of 7000: at most 8 GPUs get a block
    assert info["device"] == "cuda" and info["num_gpus"] == min(faiss.get_num_gpus(), n_blocks)
    assert info["faiss_build"] == "gpu"
    assert np.array_equal(gpu[1], cpu[1]) and np.array_equal(gpu[0], cpu[0])
