import numpy as np

from real20m.evaluate.metrics import compute_metrics, format_table


def _brute_force(query_ids, retrieved, gt, ks):
    out = {}
    evaluated = [i for i, q in enumerate(query_ids) if q in gt]
    for k in ks:
        recalls, hits, aps = [], [], []
        for i in evaluated:
            relevant = set(gt[query_ids[i]])
            seen, ranked = set(), []
            for pid in retrieved[i]:
                if pid not in seen:
                    seen.add(pid)
                    ranked.append(pid)
            top = ranked[:k]
            found = [pid in relevant for pid in top]
            recalls.append(sum(found) / len(relevant))
            hits.append(float(any(found)))
            precision_sum = sum(sum(found[:r + 1]) / (r + 1) for r in range(len(top)) if found[r])
            aps.append(precision_sum / min(len(relevant), k))
        out[k] = (np.mean(recalls), np.mean(hits), np.mean(aps))
    return out


def test_metrics_match_brute_force_with_multi_gt_queries():
    rng = np.random.default_rng(0)
    gallery = np.arange(200, dtype=np.int64) + 1000
    query_ids = np.arange(60, dtype=np.int64)
    retrieved = np.stack([rng.permutation(gallery)[:30] for _ in query_ids])
    gt = {int(q): rng.choice(gallery, size=rng.integers(1, 80), replace=False).tolist() for q in query_ids[:50]}
    ks = (1, 5, 10, 30)
    metrics = compute_metrics(query_ids, retrieved, gt, gallery, ks)
    for k, (recall, hit, ap) in _brute_force(query_ids.tolist(), retrieved.tolist(), gt, ks).items():
        assert np.isclose(metrics[f"recall@{k}"], recall)
        assert np.isclose(metrics[f"hit@{k}"], hit)
        assert np.isclose(metrics[f"map@{k}"], ap)
    assert metrics["num_queries"] == 50 and metrics["queries_without_gt"] == 10
    assert metrics["recall@30"] > 0


def test_counters_and_duplicate_gallery_ids():
    gallery = np.array([10, 11, 12, 12, 13], dtype=np.int64)     # pid 12 twice
    retrieved = np.array([[12, 12, 11, 10], [13, 10, 11, 12]], dtype=np.int64)
    gt = {1: [11, 99], 2: [13], 3: [10]}                          # 99 not in gallery; query 3 not searched
    metrics = compute_metrics([1, 2, 7], np.vstack([retrieved, retrieved[:1]]), gt, gallery, ks=(1, 2, 3, 4, 5))
    assert metrics["num_queries"] == 2
    assert metrics["queries_without_gt"] == 1                     # query 7
    assert metrics["gt_queries_missing_from_query_set"] == 1      # query 3
    assert metrics["gt_docs_missing_from_gallery"] == 1           # doc 99
    assert metrics["duplicate_gallery_ids"] == 1
    assert metrics["num_gallery"] == 5
    # query 1: the second 12 is dropped, so 11 moves up to rank 2; denominator counts doc 99 too.
    assert metrics["recall@1"] == 0.5 * (0 + 1)
    assert metrics["recall@2"] == 0.5 * (0.5 + 1)
    assert metrics["map@2"] == 0.5 * ((1 / 2) / 2 + 1)
    assert "recall@5" not in metrics and metrics["retrieved_depth"] == 4
    table = format_table(metrics)
    assert "Recall@K" in table and "gt_docs_missing_from_gallery: 1" in table


def test_missing_results_never_count():
    metrics = compute_metrics([1], np.array([[5, -1, -1]]), {1: [5, 6]}, np.array([5, 6]), ks=(1, 3))
    assert metrics["recall@3"] == 0.5 and metrics["hit@1"] == 1.0
