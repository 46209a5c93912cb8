"""A checkpoint written by W ranks resumes on W' ranks mid-epoch: the resumed run trains on every
sample of that epoch that the first run had not, each once (checked on the sampler keys the
trainers iterate), and training goes on to the end of the epoch."""
import json
import logging

import pytest

from real20m.datasets import build_train_dataset
from real20m.datasets.samplers import SourceBatchSampler
from real20m.engine.trainer import Trainer
from real20m.utils.checkpoint_io import load_checkpoint
from tests.engine.test_trainer import SINGLE_CPU, tiny_cfg
from tests.utils.process_group import run_in_processes


class RecordingSampler(SourceBatchSampler):
    """Remembers every batch it yields (a training step's keys), as (row, source, member, seed)."""

    def __iter__(self):
        for batch in super().__iter__():
            self.seen.extend(tuple(key) for key in batch)
            yield batch


def train_recording(cfg, dist, out_file) -> None:
    trainer = Trainer(cfg, dist)
    trainer.sampler.__class__ = RecordingSampler
    trainer.sampler.seen = []
    trainer.fit()
    with open(out_file, "w", encoding="utf-8") as f:
        json.dump(trainer.sampler.seen, f)


def _rank_worker(env, cfg, out_dir):
    train_recording(cfg, env, f"{out_dir}/seen_{env.rank}.json")


def train_on(world_size, cfg, out_dir) -> list[tuple]:
    """Train with ``world_size`` processes; every key trained on, all ranks together."""
    if world_size == 1:
        train_recording(cfg, SINGLE_CPU, f"{out_dir}/seen_0.json")
    else:
        run_in_processes(_rank_worker, world_size, cfg, str(out_dir))
    seen = []
    for rank in range(world_size):
        seen += [tuple(key) for key in json.loads((out_dir / f"seen_{rank}.json").read_text())]
        (out_dir / f"seen_{rank}.json").unlink()
    return seen


def planned_epoch(cfg, world_size) -> list[tuple]:
    """The samples of epoch 0 as the first run planned them (all ranks)."""
    dataset = build_train_dataset(cfg.data)
    keys = []
    for rank in range(world_size):
        sampler = SourceBatchSampler(dataset, cfg.data.batch_size, rank, world_size, cfg.seed)
        keys += [tuple(key) for batch in sampler for key in batch]
    return keys


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_resume_on_another_world_size_sees_every_sample_of_the_epoch_once(tiny_data_root, tmp_path, before,
                                                                          after, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("real20m"), "propagate", True)  # setup_logging, if run before, cut it
    common = ("--batch_size", "2", "--epochs", "1", "--seed", "4")
    first = tiny_cfg(tiny_data_root, tmp_path, *common, "--max_steps", "2")
    seen_before = train_on(before, first, tmp_path)
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "last.pth.tar")
    assert (checkpoint["world_size"], checkpoint["epoch"], checkpoint["batch_in_epoch"]) == (before, 0, 2)

    resumed = tiny_cfg(tiny_data_root, tmp_path, *common, "--resume", "latest")
    with caplog.at_level("WARNING"):
        seen_after = train_on(after, resumed, tmp_path)

    planned = planned_epoch(first, before)
    seen = seen_before + seen_after
    assert len(seen) == len(set(seen)) == len(planned) and set(seen) == set(planned)
    assert len(seen_after) > 0
    final = load_checkpoint(tmp_path / "checkpoints" / "last.pth.tar")
    assert (final["world_size"], final["epoch"], final["plan_reshards"]) == (after, 1, [])
    assert final["global_step"] == 2 + len(seen_after) // (after * 2)
    if after == 1:  # rank 0 logs in this process; the ranks of a 2-process run log in theirs
        assert f"resuming on 1 processes instead of {before}" in caplog.text
        assert "0 sample(s) that do not split evenly" in caplog.text
