import os
import socket
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from real20m.evaluate.encoder import Encoder
from real20m.evaluate.extract import ExtractionSettings, extract_features, rank_slice
from real20m.evaluate.feature_io import load_features


class FakeModel(nn.Module):
    max_text_tokens = 16

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 4)

    def encode_items(self, title_ids, title_mask, pixels):
        assert not self.training and not torch.is_grad_enabled()
        fused = self.proj(pixels.mean(dim=(1, 3, 4))) + title_ids[:, :1].float()
        return SimpleNamespace(fused=fused, title=None, visual=None)


class FakeDataset(torch.utils.data.Dataset):
    def __init__(self, n):
        self.pids = np.arange(n, dtype=np.int64) * 10 + 3

    def __len__(self):
        return len(self.pids)

    def __getitem__(self, i):
        pid = int(self.pids[i])
        return {"pid": pid, "frames": torch.full((2, 3, 4, 4), float(pid % 7)), "issues": []}


def collate(samples):
    return {"pids": torch.tensor([s["pid"] for s in samples]),
            "pixels": torch.stack([s["frames"] for s in samples]),
            "title_ids": torch.tensor([[s["pid"] % 5, 1] for s in samples]),
            "title_mask": torch.ones(len(samples), 2, dtype=torch.long),
            "issues": []}


def _env(rank, world_size):
    return SimpleNamespace(rank=rank, world_size=world_size, local_rank=rank, device=torch.device("cpu"),
                           is_main=rank == 0, backend="gloo" if world_size > 1 else None)


def test_rank_slices_cover_items_once():
    covered = [i for rank in range(3) for i in rank_slice(10, rank, 3)]
    assert covered == list(range(10))


def test_single_process_extraction(tmp_path):
    torch.manual_seed(0)
    model, dataset = FakeModel(), FakeDataset(11)
    env = _env(0, 1)
    count = extract_features(Encoder(model, env.device), dataset, collate, env, str(tmp_path),
                             ExtractionSettings(batch_size=4))
    features = load_features(str(tmp_path))
    assert count == 11 and np.array_equal(features.ids, dataset.pids)
    np.testing.assert_allclose(np.linalg.norm(features.feats, axis=1), 1.0, rtol=1e-5)
    with torch.no_grad():
        batch = collate([dataset[i] for i in range(11)])
        model.eval()
        expected = model.encode_items(batch["title_ids"], batch["title_mask"], batch["pixels"]).fused
    np.testing.assert_allclose(features.feats, torch.nn.functional.normalize(expected).numpy(), rtol=1e-5)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, out_dir, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)   # same weights on both ranks, as after DDP broadcast
        env = _env(rank, world_size)
        count = extract_features(Encoder(FakeModel(), env.device), FakeDataset(7), collate, env, out_dir,
                                 ExtractionSettings(batch_size=2, partition_size=2))
        results[rank] = count
    finally:
        dist.destroy_process_group()


def test_ddp_extraction_writes_each_pid_once(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path), results), nprocs=2)
    features = load_features(str(tmp_path))
    assert results[0] == 7
    assert sorted(features.ids.tolist()) == FakeDataset(7).pids.tolist()
    assert features.ids.tolist() == FakeDataset(7).pids.tolist()   # rank by rank, partition by partition
    sizes = {name: len(np.load(tmp_path / name)) for name in sorted(os.listdir(tmp_path)) if name.startswith("ids_")}
    assert sizes == {"ids_rank0_part00000.npy": 2, "ids_rank0_part00001.npy": 1,
                     "ids_rank1_part00000.npy": 2, "ids_rank1_part00001.npy": 2}
