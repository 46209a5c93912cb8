import torch

from real20m.engine.distributed import init_distributed
from real20m.utils.distributed import barrier, broadcast_object
from tests.utils.process_group import run_in_processes


def test_without_torchrun_environment_runs_as_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    env = init_distributed()
    assert (env.rank, env.world_size, env.local_rank, env.is_main, env.backend) == (0, 1, 0, True, None)
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    assert env.device.type == expected_device
    barrier()
    assert broadcast_object({"a": 1}) == {"a": 1}


def _collectives_worker(env, out_dir):
    barrier()
    result = {
        "env": [env.rank, env.world_size, env.local_rank, env.is_main, env.backend, str(env.device)],
        "broadcast": broadcast_object({"from": env.rank}),
    }
    torch.save(result, f"{out_dir}/rank{env.rank}.pt")


def test_two_gloo_ranks_from_torchrun_environment(tmp_path):
    run_in_processes(_collectives_worker, 2, str(tmp_path))
    results = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    assert results[0]["env"] == [0, 2, 0, True, "gloo", "cpu"]
    assert results[1]["env"] == [1, 2, 1, False, "gloo", "cpu"]
    for result in results:
        assert result["broadcast"] == {"from": 0}
