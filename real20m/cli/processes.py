"""How many processes a single-node training launch can use.

    python -m real20m.cli.processes WANTED [training flags]

prints the largest count <= WANTED for which every rank gets at least one batch in the first
epoch (the check the trainer itself makes), so that ``sh train.sh`` on a node with more GPUs than
the data can feed (the demo's synthetic dataset with configs/tiny.yaml, say) trains on fewer GPUs
instead of stopping with "too few samples". When it caps, one line on stderr names the numbers.
The batches of a bucket (one source, or one source and query cluster) are dealt to the ranks W at
a time and the leftovers dropped, so a bucket that fills fewer than W batches gives nothing.
"""
import functools
import sys

import torch

from real20m.config import ConfigError, parse_config
from real20m.datasets import build_train_dataset
from real20m.factory import build_train_sampler
from real20m.utils.distributed import DistEnv
from real20m.utils.entry import exit_on_input_error


def batches_per_process(cfg, dataset, world_size: int) -> int:
    """Batches (optimizer steps' worth of samples, as the trainer's sampler cuts them) each of
    ``world_size`` ranks gets in epoch 0; the same for every rank."""
    dist = DistEnv(rank=0, world_size=world_size, local_rank=0, device=torch.device("cpu"), is_main=True,
                   backend=None)
    return len(build_train_sampler(cfg.data, dataset, dist, cfg.seed))


def supported_processes(cfg, wanted: int) -> tuple[int, dict[int, int]]:
    """(largest world size <= ``wanted`` with a batch for every rank, or 1; {world size: batches per
    process} for the sizes tried). With one process and no batch the trainer reports the problem."""
    dataset = build_train_dataset(cfg.data)
    tried = {}
    for world_size in range(wanted, 0, -1):  # batches per rank only shrink as the world grows
        tried[world_size] = batches_per_process(cfg, dataset, world_size)
        if tried[world_size] > 0:
            return world_size, tried
    return 1, tried


def plan(wanted: int, train_argv: list[str]) -> int:
    if "--print_config" in train_argv:
        return 1  # it reads no data and prints the configuration: once is enough
    cfg = parse_config(train_argv)
    if cfg.run.evaluate:
        return wanted  # writing features splits the items over the ranks; no batches to fill
    count, tried = supported_processes(cfg, wanted)
    if count < wanted and tried[count] > 0:  # with no batch at all the trainer's own error says so
        print(f"launching {count} of {wanted} processes: {cfg.data.train_file} fills "
              f"{tried[count]} batch(es) of {cfg.data.step_batch_size} per process with {count} and "
              f"none with {count + 1} (NPROC_PER_NODE sets the count)", file=sys.stderr)
    return count


def _run(argv: list[str]) -> None:
    if not argv or not argv[0].isdigit() or int(argv[0]) < 1:
        raise ConfigError(f"usage: python -m real20m.cli.processes WANTED [training flags] "
                          f"(WANTED a positive integer, got {argv[0] if argv else 'nothing'})")
    print(plan(int(argv[0]), argv[1:]))


def main(argv=None) -> None:
    exit_on_input_error(functools.partial(_run, list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
