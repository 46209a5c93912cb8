"""--save_topk: search_res.npy / search_res_dis.npy / search_res_queries.npy as the original's scripts saved."""
import numpy as np

from real20m.evaluate.cli import parse_request, run_evaluation
from real20m.evaluate.feature_io import write_legacy_features


def _evaluate(tmp_path, n_gallery, *extra):
    rng = np.random.default_rng(4)
    feats = rng.standard_normal((7 + n_gallery, 16)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    query_ids, gallery_ids = np.arange(7) * 3 + 900, np.arange(n_gallery) * 7 + 20
    write_legacy_features(str(tmp_path / "q.feat"), query_ids, feats[:7])
    write_legacy_features(str(tmp_path / "g.feat"), gallery_ids, feats[7:])
    (tmp_path / "gt.txt").write_text(f"video/images/0/900_0.jpg\tgoods/images/0/{gallery_ids[0]}.jpg\n")
    run_evaluation(parse_request([
        "--query_features", str(tmp_path / "q.feat"), "--gallery_features", str(tmp_path / "g.feat"),
        "--gt_file", str(tmp_path / "gt.txt"), "--output_dir", str(tmp_path / "eval"), "--quiet", *extra]))
    saved = [np.load(tmp_path / "eval" / name) for name in
             ("search_res.npy", "search_res_dis.npy", "search_res_queries.npy")]
    return feats[:7], feats[7:], query_ids, gallery_ids, saved


def _brute_force_topk(queries, gallery, k):
    scores = queries @ gallery.T
    order = np.lexsort((np.broadcast_to(np.arange(len(gallery)), scores.shape), -scores), axis=1)[:, :k]
    return order, np.take_along_axis(scores, order, 1)


def test_saved_topk_equals_brute_force_and_is_deeper_than_the_metrics(tmp_path):
    queries, gallery, query_ids, gallery_ids, (ids, scores, saved_queries) = _evaluate(
        tmp_path, 60, "--topk", "5", "--save_topk", "12")
    order, expected_scores = _brute_force_topk(queries, gallery, 12)
    assert ids.dtype == np.int64 and scores.dtype == np.float32 and ids.shape == scores.shape == (7, 12)
    assert np.array_equal(saved_queries, query_ids)
    assert np.array_equal(ids, gallery_ids[order])
    np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=1e-5)


def test_saved_topk_beyond_the_gallery_is_padded_with_minus_one_and_minus_infinity(tmp_path):
    queries, gallery, _, gallery_ids, (ids, scores, _) = _evaluate(tmp_path, 4, "--topk", "3", "--save_topk", "6")
    order, expected_scores = _brute_force_topk(queries, gallery, 4)
    assert ids.shape == (7, 6)
    assert np.array_equal(ids[:, :4], gallery_ids[order]) and (ids[:, 4:] == -1).all()
    np.testing.assert_allclose(scores[:, :4], expected_scores, rtol=0, atol=1e-5)
    assert np.isneginf(scores[:, 4:]).all()
