import torch
import torch.nn.functional as F

from real20m.losses.contrastive import gather_with_grad, info_nce
from tests.losses.reference import numpy_symmetric_info_nce
from tests.utils.process_group import run_in_processes

GLOBAL_BATCH, IN_DIM, EMBED_DIM, SCALE = 8, 6, 4, 10.0


def make_problem():
    """Inputs of the whole global batch, two projections and memory negatives; identical on every rank."""
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "x_a": torch.randn(GLOBAL_BATCH, IN_DIM, generator=generator),
        "x_b": torch.randn(GLOBAL_BATCH, IN_DIM, generator=generator),
        "w_a": torch.randn(IN_DIM, EMBED_DIM, generator=generator),
        "w_b": torch.randn(IN_DIM, EMBED_DIM, generator=generator),
        "extra_a": F.normalize(torch.randn(5, EMBED_DIM, generator=generator), dim=1),
        "extra_b": F.normalize(torch.randn(5, EMBED_DIM, generator=generator), dim=1),
    }
    tensors["w_a"].requires_grad_(True)
    tensors["w_b"].requires_grad_(True)
    return tensors


def loss_and_grads(rows: slice, use_extra: bool) -> dict:
    p = make_problem()
    a = F.normalize(p["x_a"][rows] @ p["w_a"], dim=1)
    b = F.normalize(p["x_b"][rows] @ p["w_b"], dim=1)
    extra = (p["extra_a"], p["extra_b"]) if use_extra else (None, None)
    loss = info_nce(a, b, SCALE, *extra)
    loss.backward()
    return {"loss": loss.detach(), "w_a": p["w_a"].grad, "w_b": p["w_b"].grad}


def _rank_worker(env, out_dir):
    per_rank = GLOBAL_BATCH // env.world_size
    rows = slice(env.rank * per_rank, (env.rank + 1) * per_rank)
    for use_extra in (False, True):
        torch.save(loss_and_grads(rows, use_extra), f"{out_dir}/rank{env.rank}_{use_extra}.pt")


def test_info_nce_matches_numpy_reference():
    p = make_problem()
    a = F.normalize(p["x_a"] @ p["w_a"], dim=1).detach()
    b = F.normalize(p["x_b"] @ p["w_b"], dim=1).detach()
    expected = numpy_symmetric_info_nce(a.double().numpy(), b.double().numpy(), SCALE)
    assert abs(info_nce(a, b, SCALE).item() - expected) < 1e-5
    expected_extra = numpy_symmetric_info_nce(
        a.double().numpy(), b.double().numpy(), SCALE, p["extra_a"].double().numpy(), p["extra_b"].double().numpy()
    )
    assert abs(info_nce(a, b, SCALE, p["extra_a"], p["extra_b"]).item() - expected_extra) < 1e-5
    assert expected_extra > expected  # more negatives, larger loss here


def test_gather_is_identity_without_process_group():
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x


def test_two_ranks_average_to_the_single_process_loss_and_gradient(tmp_path):
    run_in_processes(_rank_worker, 2, str(tmp_path))
    for use_extra in (False, True):
        ranks = [torch.load(tmp_path / f"rank{r}_{use_extra}.pt", weights_only=True) for r in range(2)]
        reference = loss_and_grads(slice(None), use_extra)
        for key in ("loss", "w_a", "w_b"):
            averaged = (ranks[0][key] + ranks[1][key]) / 2
            assert (averaged - reference[key]).abs().max().item() <= 1e-5, key
        # The ranks really hold different halves: their own gradients differ from the average.
        assert (ranks[0]["w_a"] - reference["w_a"]).abs().max().item() > 1e-4
