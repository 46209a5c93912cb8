"""A short real training run with one comparison term as the whole objective, recording that
term's value at every step (shared by the comparison terms' tests)."""
from pathlib import Path

import torch

from real20m.config import parse_config
from real20m.engine.trainer import Trainer
from real20m.utils.distributed import DistEnv

REPO = Path(__file__).resolve().parents[2]
SINGLE_CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True, backend=None)
QCD_TERMS = ("fused", "title", "visual", "consistency", "caption")


def train_term_alone(term: str, data_root: str, output_dir, steps: int, *extra: str) -> list[float]:
    """The logged value of ``term`` at each of ``steps`` steps of the tiny config, ``term`` weighted 1
    and the QCD terms 0."""
    zeroed = [argument for name in QCD_TERMS for argument in (f"--loss.weights.{name}", "0")]
    cfg = parse_config(["--config", str(REPO / "configs" / "tiny.yaml"), "--data_root", data_root,
                        "--output_dir", str(output_dir), "--batch_size", "4", "--workers", "0", "--image_size", "32",
                        "--vocab_size", "300", "--print_freq", "100", "--epochs", "100", "--max_steps", str(steps),
                        "--lr", "0.002", *zeroed, f"--loss.weights.{term}", "1", *extra])
    trainer = Trainer(cfg, SINGLE_CPU)
    values, step = [], trainer.train_step

    def recording_step(batch):
        terms = step(batch)
        values.append(terms[term])
        return terms
    trainer.train_step = recording_step
    trainer.fit()
    assert len(values) == steps
    return values


def mean(values) -> float:
    return sum(values) / len(values)
