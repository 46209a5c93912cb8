import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from real20m.losses.contrastive import info_nce
from real20m.losses.memory_bank import MemorySpec
from real20m.losses.qcd_loss import QCDLoss
from tests.losses.reference import numpy_symmetric_info_nce
from tests.utils.process_group import run_in_processes


def normalized(rows):
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# 3 items x 4 dims; query 2 is closer to item 0 than to its own item, so top1 = 2/3.
QUERY = normalized([[1, 0, 0, 0.2], [0, 1, 0.1, 0], [0.9, 0.1, 0.3, 0]])
TITLE = normalized([[1, 0.1, 0, 0], [0.2, 1, 0, 0], [0, 0, 1, 0.5]])
VISUAL = normalized([[0.8, 0, 0.3, 0.1], [0, 0.9, 0, 0.4], [0.1, 0.2, 1, 0]])
FUSED = normalized([[1, 0, 0, 0], [0, 1, 0, 0], [0.3, 0, 1, 0]])


def outputs():
    return {name: torch.tensor(value, dtype=torch.float32)
            for name, value in (("query", QUERY), ("title", TITLE), ("visual", VISUAL), ("fused", FUSED))}


# Caption decoder outputs: 3 queries x 2 next tokens over a vocabulary of 3; the last target is padding.
CAPTION_LOGITS = np.array([[[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]],
                           [[0.3, 0.3, 0.3], [1.5, -0.5, 0.2]],
                           [[-1.0, 2.0, 0.0], [9.0, 9.0, 9.0]]])
CAPTION_TARGETS = np.array([[0, 1], [2, 0], [1, -100]])


def caption_outputs():
    return {"caption_logits": torch.tensor(CAPTION_LOGITS, dtype=torch.float32),
            "caption_targets": torch.tensor(CAPTION_TARGETS)}


def numpy_caption_cross_entropy():
    log_probs = CAPTION_LOGITS - np.log(np.exp(CAPTION_LOGITS).sum(axis=-1, keepdims=True))
    kept = [log_probs[i, t, CAPTION_TARGETS[i, t]] for i in range(3) for t in range(2) if CAPTION_TARGETS[i, t] >= 0]
    return -np.mean(kept)


def test_terms_and_total_match_hand_computed_reference():
    weights = {"fused": 1.0, "title": 0.5, "visual": 2.0, "consistency": 3.0, "caption": 0.3, "itc": 0.25}
    loss = QCDLoss(weights, logit_scale=20.0)
    total, terms = loss({**outputs(), **caption_outputs()})

    expected = {
        "fused": numpy_symmetric_info_nce(QUERY, FUSED, 20.0),
        "title": numpy_symmetric_info_nce(QUERY, TITLE, 20.0),
        "visual": numpy_symmetric_info_nce(QUERY, VISUAL, 20.0),
        "consistency": np.mean((FUSED - VISUAL) ** 2),
        "caption": numpy_caption_cross_entropy(),
        "itc": numpy_symmetric_info_nce(TITLE, VISUAL, 20.0),
    }
    expected["total"] = (expected["fused"] + 0.5 * expected["title"] + 2.0 * expected["visual"]
                         + 3.0 * expected["consistency"] + 0.3 * expected["caption"] + 0.25 * expected["itc"])
    for name, value in expected.items():
        assert terms[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    assert total.item() == pytest.approx(expected["total"], rel=1e-5)
    assert terms["top1"] == pytest.approx(2 / 3)
    assert terms["top5"] == pytest.approx(1.0)
    assert terms["logit_scale"] == pytest.approx(20.0)
    assert all(isinstance(value, float) for value in terms.values())


def test_paper_defaults_and_disabled_terms():
    loss = QCDLoss({"caption": 0.0})
    total, terms = loss(outputs())
    assert terms["itc"] == 0.0 and terms["caption"] == 0.0  # itc off by default, caption switched off
    expected = (numpy_symmetric_info_nce(QUERY, FUSED, 20.0) + numpy_symmetric_info_nce(QUERY, TITLE, 20.0)
                + numpy_symmetric_info_nce(QUERY, VISUAL, 20.0) + np.mean((FUSED - VISUAL) ** 2))
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="unknown QCD loss term"):
        QCDLoss({"fusd": 1.0})
    with pytest.raises(ValueError, match="logit_scale"):
        QCDLoss({}, logit_scale=0.0)
    with pytest.raises(KeyError, match="fused"):
        QCDLoss({})({"query": torch.zeros(3, 4)})
    with pytest.raises(KeyError, match="caption decoder"):
        QCDLoss({})(outputs())  # caption weight 1 but no decoder outputs


def test_learnable_scale_gets_a_gradient_and_is_clamped():
    loss = QCDLoss({"caption": 0.0}, learnable_scale=True)
    embeddings = {name: value.requires_grad_(True) for name, value in outputs().items()}
    total, _ = loss(embeddings)
    total.backward()
    assert loss.log_scale.grad is not None and loss.log_scale.grad.abs().item() > 0
    with torch.no_grad():
        loss.log_scale.fill_(math.log(500.0))
    assert loss.logit_scale().item() == pytest.approx(100.0)
    assert list(QCDLoss({}).parameters()) == []  # fixed scale: nothing to optimise


def test_memory_bank_adds_negatives_only_after_it_has_been_filled():
    with_memory = QCDLoss({"caption": 0.0}, memory=MemorySpec(8, 4))
    without_memory = QCDLoss({"caption": 0.0})
    _, first = with_memory(outputs())
    _, plain = without_memory(outputs())
    assert first["fused"] == pytest.approx(plain["fused"])  # memory still empty
    assert int(with_memory.memory.filled) == 3

    _, second = with_memory(outputs())
    memory_queries, memory_items = torch.tensor(QUERY, dtype=torch.float32), torch.tensor(FUSED, dtype=torch.float32)
    o = outputs()
    expected = info_nce(o["query"], o["fused"], 20.0, extra_a=memory_queries, extra_b=memory_items).item()
    assert second["fused"] == pytest.approx(expected, rel=1e-5)
    assert second["fused"] > plain["fused"] + 0.1
    assert second["title"] == pytest.approx(plain["title"])  # memory only serves the fused term

    with_memory.eval()
    with_memory(outputs())
    assert int(with_memory.memory.filled) == 6  # evaluation passes do not enqueue


GLOBAL_BATCH, IN_DIM, EMBED_DIM = 8, 5, 4
WEIGHTS = {"fused": 1.0, "title": 0.7, "visual": 1.3, "consistency": 2.0, "caption": 0.5, "itc": 0.2}


def make_tower():
    generator = torch.Generator().manual_seed(1)
    params = {name: torch.randn(IN_DIM, EMBED_DIM, generator=generator).requires_grad_(True)
              for name in ("query", "title", "visual")}
    params["mix"] = torch.tensor([0.6, 0.4], requires_grad=True)
    batches = [{name: torch.randn(GLOBAL_BATCH, IN_DIM, generator=generator) for name in ("query", "title", "visual")}
               for _ in range(2)]
    return params, batches


def forward_tower(params, batch, rows):
    out = {name: F.normalize(batch[name][rows] @ params[name], dim=1) for name in ("query", "title", "visual")}
    out["fused"] = F.normalize(params["mix"][0] * out["title"] + params["mix"][1] * out["visual"], dim=1)
    # stands in for the decoder: one next-token distribution over EMBED_DIM "tokens" per query
    out["caption_logits"] = (batch["query"][rows] @ params["visual"]).unsqueeze(1)
    out["caption_targets"] = torch.zeros(out["caption_logits"].shape[0], 1, dtype=torch.long)
    return out


def qcd_step_results(rows):
    """Two training steps; the second sees the first batch in its memory. Loss + grads of step two."""
    params, batches = make_tower()
    loss = QCDLoss(WEIGHTS, logit_scale=12.0, learnable_scale=True, memory=MemorySpec(32, EMBED_DIM))
    with torch.no_grad():
        loss(forward_tower(params, batches[0], rows))
    total, terms = loss(forward_tower(params, batches[1], rows))
    total.backward()
    result = {name: param.grad for name, param in params.items()}
    result.update(total=total.detach(), log_scale=loss.log_scale.grad, memory=loss.memory.items.clone(),
                  top1=torch.tensor(terms["top1"]), fused_term=torch.tensor(terms["fused"]))
    return result


def _qcd_rank_worker(env, out_dir):
    per_rank = GLOBAL_BATCH // env.world_size
    torch.save(qcd_step_results(slice(env.rank * per_rank, (env.rank + 1) * per_rank)), f"{out_dir}/qcd{env.rank}.pt")


def test_qcd_loss_on_two_ranks_averages_to_the_single_process_result(tmp_path):
    run_in_processes(_qcd_rank_worker, 2, str(tmp_path))
    ranks = [torch.load(tmp_path / f"qcd{rank}.pt", weights_only=True) for rank in range(2)]
    reference = qcd_step_results(slice(None))
    for key, expected in reference.items():
        averaged = (ranks[0][key] + ranks[1][key]) / 2
        assert (averaged - expected).abs().max().item() <= 1e-5, key
    assert torch.equal(ranks[0]["memory"], ranks[1]["memory"])  # every rank enqueues the gathered batch
