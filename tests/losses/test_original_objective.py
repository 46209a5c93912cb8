"""The original release's objective options: in-batch negatives per rank, its cross-batch memory,
and terms that are logged but not added."""
import numpy as np
import pytest
import torch

from real20m.losses.memory_bank import MemorySpec
from real20m.losses.qcd_loss import QCDLoss
from tests.losses.reference import numpy_symmetric_info_nce
from tests.utils.process_group import run_in_processes

SCALE = 5.0  # a small scale keeps the random embeddings' losses of order 1
ONLY_FUSED = {"fused": 1.0, "title": 0.0, "visual": 0.0, "consistency": 0.0, "caption": 0.0}


def unit_rows(rng, n, dim=4):
    rows = rng.standard_normal((n, dim))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def embeddings(seed, n=6):
    rng = np.random.default_rng(seed)
    return {name: unit_rows(rng, n) for name in ("query", "title", "visual", "fused")}


def as_tensors(values, rows=slice(None)):
    return {name: torch.tensor(value[rows], dtype=torch.float32) for name, value in values.items()}


def _local_negatives_worker(env, out_dir):
    rows = slice(3 * env.rank, 3 * env.rank + 3)
    values = embeddings(0)
    _, local = QCDLoss({"caption": 0.0}, logit_scale=SCALE, local_negatives=True)(as_tensors(values, rows))
    _, gathered = QCDLoss({"caption": 0.0}, logit_scale=SCALE)(as_tensors(values, rows))
    torch.save({"local": local["fused"], "gathered": gathered["fused"], "top1": local["top1"]},
               f"{out_dir}/rank{env.rank}.pt")


def test_local_negatives_at_world_size_two_are_each_ranks_in_batch_loss(tmp_path):
    run_in_processes(_local_negatives_worker, 2, str(tmp_path))
    values = embeddings(0)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        rows = slice(3 * rank, 3 * rank + 3)
        assert result["local"] == pytest.approx(numpy_symmetric_info_nce(values["query"][rows], values["fused"][rows],
                                                                         SCALE), rel=1e-5)
        assert result["gathered"] != pytest.approx(result["local"], rel=1e-3)  # 5 negatives, not 2


def numpy_original_xbm(steps, batch, slots, scale=SCALE):
    """The release's memory, step by step, and its fused loss at each step."""
    bank_q, bank_i = np.zeros((slots, 4)), np.zeros((slots, 4))
    pointer, full, losses = 0, False, []
    for query, fused in steps:
        if pointer + batch > slots:
            pointer, full = batch, True
        bank_q[pointer:pointer + batch], bank_i[pointer:pointer + batch] = bank_q[:batch].copy(), bank_i[:batch].copy()
        bank_q[:batch], bank_i[:batch] = query, fused
        pointer += batch
        filled = slots if full else pointer

        def cross_entropy(rows, columns):
            logits = scale * rows @ columns.T
            log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            return -np.mean(log_softmax[np.arange(batch), np.arange(batch)])
        losses.append((cross_entropy(query, fused) + cross_entropy(fused, query)
                       + cross_entropy(query, bank_i[:filled]) + cross_entropy(fused, bank_q[:filled])) / 4)
    return losses


def test_original_xbm_matches_a_hand_computed_reference():
    batch, slots = 2, 5
    steps = [embeddings(seed, batch) for seed in range(7)]  # fills, wraps around, counts as full
    loss = QCDLoss(ONLY_FUSED, logit_scale=SCALE, memory=MemorySpec(slots, 4, "original"), local_negatives=True)
    produced = [loss(as_tensors(step))[1]["fused"] for step in steps]
    expected = numpy_original_xbm([(step["query"], step["fused"]) for step in steps], batch, slots)
    assert produced == pytest.approx(expected, rel=1e-5)
    assert bool(loss.memory.full)


def test_a_logged_term_is_reported_but_not_added():
    values = as_tensors(embeddings(3))
    total, terms = QCDLoss({"caption": 0.0, "itc": 0.0}, log_terms=("itc",))(values)
    plain_total, plain = QCDLoss({"caption": 0.0, "itc": 0.0})(values)
    assert total.item() == pytest.approx(plain_total.item())
    assert plain["itc"] == 0.0 and terms["itc"] > 0.1
    with pytest.raises(ValueError, match="unknown QCD loss term"):
        QCDLoss({}, log_terms=("nope",))


def test_without_query_normalisation_the_raw_query_projection_is_scored():
    values = embeddings(3)
    raw = values["query"] * np.array([[2.0], [3.0], [0.5], [1.0], [4.0], [1.5]])  # norms the original keeps
    out = {**as_tensors(values), "query_raw": torch.tensor(raw, dtype=torch.float32)}
    _, terms = QCDLoss(ONLY_FUSED, logit_scale=SCALE, normalize_query=False)(out)
    _, unit = QCDLoss(ONLY_FUSED, logit_scale=SCALE)(out)
    assert terms["fused"] == pytest.approx(numpy_symmetric_info_nce(raw, values["fused"], SCALE), rel=1e-5)
    assert unit["fused"] == pytest.approx(numpy_symmetric_info_nce(values["query"], values["fused"], SCALE), rel=1e-5)
