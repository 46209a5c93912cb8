"""Gradient accumulation (--accum_freq): N micro-batches of B train as one batch of N x B."""
import contextlib
import copy

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from real20m.config import ConfigError, parse_config
from real20m.engine.accumulation import MicroBatchStep, accumulate_gradients, concat_outputs, split_batch
from real20m.engine.trainer import Trainer, TrainStep, no_buffer_resync
from real20m.losses import QCDLoss
from real20m.losses.memory_bank import MemorySpec
from real20m.models import build_model
from tests.engine.test_trainer import SINGLE_CPU, recorded_losses, tiny_cfg
from tests.models.conftest import TINY_VIT, VOCAB, deterministic_tiny_config, make_batch
from tests.utils.process_group import run_in_processes

CPU = torch.device("cpu")
MICRO, COUNT = 2, 3  # micro-batches of 2, three per step: one step scores 6 samples
ATOL = 1e-5
NO_DROPOUT = ["--model.text.hidden_dropout_prob", "0", "--model.text.attention_probs_dropout_prob", "0",
              "--model.caption.dropout", "0"]


@pytest.fixture
def data_root(tiny_data_root):
    return tiny_data_root


def model_and_objective(model_cfg: dict, memory_slots: int = 0, memory_mode: str = "ours", **loss_options):
    """A tiny model and the full objective (every default term, the caption included, and a
    learnable logit scale), its memory bank (if ``memory_slots``) already holding earlier rows."""
    torch.manual_seed(0)
    model = build_model(model_cfg, vocab_size=VOCAB)
    memory = MemorySpec(memory_slots, model.embed_dim, memory_mode) if memory_slots else None
    criterion = QCDLoss(learnable_scale=True, memory=memory, **loss_options)
    if criterion.memory is not None:
        earlier = torch.nn.functional.normalize(torch.randn(2, 4, model.embed_dim), dim=-1)
        (criterion.memory.write if criterion.writes_memory_first else criterion.memory.enqueue)(*earlier)
    return model, criterion


def one_batch_step(model, criterion, batch):
    loss, terms = TrainStep(model, criterion)(batch)
    loss.backward()
    return terms


def accumulated_step(model, criterion, batch):
    return accumulate_gradients(MicroBatchStep(model, criterion), batch, MICRO, contextlib.nullcontext,
                                lambda loss: loss.backward(), CPU)


def assert_same_gradients(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    actual_params = dict(actual.named_parameters())
    with_grad = 0
    for name, param in expected.named_parameters():
        other = actual_params[name].grad
        if param.grad is None:
            assert other is None, name
            continue
        with_grad += 1
        torch.testing.assert_close(other, param.grad, atol=ATOL, rtol=1e-4, msg=name)
    assert with_grad > 50  # the towers, the fusion, the caption decoder and the logit scale


@pytest.mark.parametrize("loss_options", [
    {},
    {"memory_slots": 16},
    {"memory_slots": 16, "memory_mode": "original", "local_negatives": True},
], ids=["plain", "xbm", "original_xbm_local_negatives"])
def test_micro_batches_give_the_loss_gradients_and_step_of_one_large_batch(loss_options):
    model, criterion = model_and_objective(deterministic_tiny_config(), **loss_options)
    model_copy, criterion_copy = copy.deepcopy(model), copy.deepcopy(criterion)
    batch = make_batch(batch_size=MICRO * COUNT)

    expected = one_batch_step(model, criterion, batch)
    actual = accumulated_step(model_copy, criterion_copy, batch)

    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        assert actual[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    # The logit scale's gradient included: counted once, not once per micro-batch.
    assert_same_gradients(torch.nn.ModuleList([model, criterion]), torch.nn.ModuleList([model_copy, criterion_copy]))
    # The memory took the step's batch once, as the one batch wrote it.
    for name, buffer in criterion.named_buffers():
        torch.testing.assert_close(dict(criterion_copy.named_buffers())[name], buffer, atol=ATOL, rtol=0, msg=name)

    for module, module_copy in ((model, model_copy), (criterion, criterion_copy)):
        for params in (module.parameters(), module_copy.parameters()):
            torch.optim.SGD(params, lr=0.1).step()
        for (name, param), param_copy in zip(module.named_parameters(), module_copy.parameters()):
            torch.testing.assert_close(param_copy, param, atol=ATOL, rtol=0, msg=name)


def tiny_config_with_dropout() -> dict:
    cfg = deterministic_tiny_config()
    cfg["text"].update(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    cfg["caption"]["dropout"] = 0.3
    return cfg


def test_dropout_sees_the_same_masks_in_the_kept_and_the_recomputed_outputs():
    """With dropout on, the step equals the objective over the micro-batches' outputs drawn one
    after the other, and the RNG ends where those draws leave it."""
    model, criterion = model_and_objective(tiny_config_with_dropout())
    model_copy, criterion_copy = copy.deepcopy(model), copy.deepcopy(criterion)
    batch = make_batch(batch_size=MICRO * COUNT)

    torch.manual_seed(1)
    outputs = [model(micro) for micro in split_batch(batch, MICRO)]
    expected_rng = torch.get_rng_state()
    loss, expected = criterion(concat_outputs(outputs))
    loss.backward()

    torch.manual_seed(1)
    actual = accumulated_step(model_copy, criterion_copy, batch)
    assert torch.equal(torch.get_rng_state(), expected_rng)
    assert actual["total"] == pytest.approx(expected["total"], rel=1e-5)
    assert_same_gradients(model, model_copy)


def test_split_batch_cuts_every_tensor_and_item_pairs_and_passes_the_rest_on():
    batch = {"title_ids": torch.arange(5)[:, None], "source": "goods", "issues": [("missing", "a.jpg")],
             "pair": {"pixels": torch.arange(5) * 10}}
    parts = split_batch(batch, 2)
    assert [part["title_ids"].flatten().tolist() for part in parts] == [[0, 1], [2, 3], [4]]
    assert [part["pair"]["pixels"].tolist() for part in parts] == [[0, 10], [20, 30], [40]]
    assert all(part["source"] == "goods" and part["issues"] == batch["issues"] for part in parts)


def _ddp_worker(env, out_dir):
    model, criterion = model_and_objective(deterministic_tiny_config())
    step = DistributedDataParallel(MicroBatchStep(model, criterion), **no_buffer_resync())
    rows = MICRO * COUNT
    local = split_batch(global_batch(), rows)[env.rank]
    terms = accumulate_gradients(step, local, MICRO, contextlib.nullcontext, lambda loss: loss.backward(), CPU)
    grads = {name: param.grad for name, param in step.module.named_parameters() if param.grad is not None}
    torch.save({"grads": grads, "total": terms["total"]}, f"{out_dir}/rank{env.rank}.pt")


def global_batch():
    """Two ranks' batches; every query unpadded, so that each rank's caption loss averages as many
    tokens and the ranks' mean is the mean over the global batch."""
    batch = make_batch(batch_size=2 * MICRO * COUNT)
    batch["query_mask"] = torch.ones_like(batch["query_mask"])
    return batch


def test_two_ddp_ranks_accumulating_give_the_gradients_of_the_global_batch(tmp_path):
    run_in_processes(_ddp_worker, 2, str(tmp_path))
    model, criterion = model_and_objective(deterministic_tiny_config())
    expected_terms = one_batch_step(model, criterion, global_batch())
    expected = {f"model.{name}": param.grad for name, param in model.named_parameters()}
    expected |= {f"criterion.{name}": param.grad for name, param in criterion.named_parameters()}
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert result["grads"].keys() == {name for name, grad in expected.items() if grad is not None}
        for name, grad in result["grads"].items():
            torch.testing.assert_close(grad, expected[name], atol=ATOL, rtol=1e-4, msg=name)
    # Each rank logs the loss of its own rows against the global negatives; DDP averages the gradients.
    totals = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)["total"] for rank in range(2)]
    assert sum(totals) / 2 == pytest.approx(expected_terms["total"], rel=1e-5)


def test_accum_freq_trains_as_the_batch_of_all_micro_batches(data_root, tmp_path):
    """--batch_size 2 --accum_freq 2 reads the data of --batch_size 4 and takes the same steps (SGD:
    Adam would turn the float noise of a zero gradient, such as an attention key bias's, into a step).
    A ViT vision tower: BatchNorm (the tiny config's CNN) normalises each micro-batch by its own statistics."""
    options = ("--max_steps", "2", "--optimizer", "sgd", *NO_DROPOUT, *TINY_VIT)
    large = Trainer(tiny_cfg(data_root, tmp_path / "large", *options), SINGLE_CPU)
    accumulated = Trainer(tiny_cfg(data_root, tmp_path / "accumulated", *options, "--batch_size", "2",
                                   "--accum_freq", "2"), SINGLE_CPU)
    assert len(accumulated.sampler) == len(large.sampler)  # epochs and the LR schedule in optimizer steps
    large_losses, accumulated_losses = recorded_losses(large), recorded_losses(accumulated)
    large.fit()
    accumulated.fit()

    assert accumulated.global_step == large.global_step == 2
    assert accumulated_losses == pytest.approx(large_losses, rel=1e-5)
    for name, value in large.model.state_dict().items():
        torch.testing.assert_close(accumulated.model.state_dict()[name], value, atol=ATOL, rtol=1e-4, msg=name)


def test_accum_freq_resumes_mid_epoch_exactly(data_root, tmp_path):
    """With dropout on: the checkpoint after 2 of the 3 optimizer steps of epoch 0 continues the
    same run bitwise, into the next epoch."""
    options = ("--batch_size", "2", "--accum_freq", "2", "--epochs", "2", "--max_steps", "4")
    full = Trainer(tiny_cfg(data_root, tmp_path / "full", *options, "--save_freq", "2", "--keep_checkpoints", "0"),
                   SINGLE_CPU)
    assert len(full.sampler) == 3
    full_losses = recorded_losses(full)
    full.fit()
    middle = tmp_path / "full" / "checkpoints" / "checkpoint_0_2.pth.tar"

    resumed = Trainer(tiny_cfg(data_root, tmp_path / "resumed", *options, "--resume", str(middle)), SINGLE_CPU)
    assert (resumed.epoch, resumed.batch_in_epoch, resumed.global_step) == (0, 2, 2)
    resumed_losses = recorded_losses(resumed)
    resumed.fit()

    assert (resumed.epoch, resumed.global_step) == (1, 4) and resumed_losses == full_losses[2:]
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_accum_freq_is_a_positive_integer_and_sizes_the_original_memory_by_the_step_batch():
    with pytest.raises(ConfigError, match="accum_freq"):
        parse_config(["--config", "tiny", "--accum_freq", "0"])
    cfg = parse_config(["--config", "tiny", "--batch_size", "8", "--accum_freq", "3", "--is_xbm",
                        "--xbm_mode", "original"])
    assert cfg.optim.accum_freq == 3 and cfg.loss.xbm_size == 10 * 8 * 3


def test_batch_norm_running_statistics_count_each_micro_batch_once(data_root, tmp_path):
    """The tiny config's CNN has BatchNorm: after one accumulated step its running statistics are
    those of the gradient passes alone (the no-gradient passes leave them as they were)."""
    cfg = tiny_cfg(data_root, tmp_path, "--batch_size", "2", "--accum_freq", "2", "--max_steps", "1", *NO_DROPOUT)
    trainer = Trainer(cfg, SINGLE_CPU)
    norms = [m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    trainer.fit()
    assert all(int(m.num_batches_tracked) == 2 for m in norms)
