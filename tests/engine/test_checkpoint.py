import pickle

import pytest
import torch

from real20m.engine.checkpoint import CheckpointManager
from real20m.utils.checkpoint_io import CheckpointError, load_checkpoint, save_checkpoint


def state(value: float) -> dict:
    return {"model": {"weight": torch.full((2, 3), value)}, "epoch": 1, "global_step": 7, "note": "ok", "x": None}


def test_save_then_load_round_trip(tmp_path):
    path = tmp_path / "sub" / "ckpt.pth.tar"
    save_checkpoint(state(1.5), path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["weight"], torch.full((2, 3), 1.5))
    assert loaded["global_step"] == 7 and loaded["note"] == "ok" and loaded["x"] is None
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pth.tar"]


def test_crash_while_writing_keeps_the_previous_last_checkpoint(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path)
    manager.save(state(1.0), epoch=0, step=10)
    real_save = torch.save

    def crash_half_way(obj, file, *args, **kwargs):
        real_save(obj, file, *args, **kwargs)
        file.truncate(100)  # part of the bytes reached the disk, then the process died
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_half_way)
    with pytest.raises(CheckpointError, match="cannot write the checkpoint \(disk full\)"):
        manager.save(state(2.0), epoch=0, step=20)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_0_10.pth.tar", "last.pth.tar"]
    assert manager.latest() == tmp_path / "last.pth.tar"
    assert torch.equal(load_checkpoint(manager.latest())["model"]["weight"], torch.full((2, 3), 1.0))


def test_manager_points_last_at_the_newest_and_prunes(tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoints", keep_last_n=2)
    assert manager.latest() is None
    for step, value in ((5, 1.0), (10, 2.0), (15, 3.0)):
        path = manager.save(state(value), epoch=step // 10, step=step)
    assert path.name == "checkpoint_1_15.pth.tar"
    assert [p.name for p in manager.numbered_checkpoints()] == ["checkpoint_1_10.pth.tar", "checkpoint_1_15.pth.tar"]
    assert torch.equal(load_checkpoint(manager.latest())["model"]["weight"], torch.full((2, 3), 3.0))


def test_latest_falls_back_to_numbered_files_and_ignores_temp_leftovers(tmp_path):
    manager = CheckpointManager(tmp_path)
    save_checkpoint(state(1.0), tmp_path / "checkpoint_2_100.pth.tar")
    save_checkpoint(state(1.0), tmp_path / "checkpoint_10_50.pth.tar")
    (tmp_path / ".checkpoint_11_0.pth.tar.123.abc.tmp").write_bytes(b"partial")
    assert manager.latest() == tmp_path / "checkpoint_10_50.pth.tar"  # epoch 10 > epoch 2 (numeric order)


@pytest.mark.parametrize(
    "content, reason",
    [
        (None, "not found"),
        (b"", "truncated or corrupt"),
        (b"PK\x03\x04 a zip header and nothing else", "truncated or corrupt"),
        (b"\x80\x02 garbage after a pickle header", "unsafe"),  # weights_only stops at the first odd opcode
    ],
)
def test_missing_or_garbage_files_raise_a_clear_error(tmp_path, content, reason):
    path = tmp_path / "bad.pth.tar"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=reason) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)


def test_truncated_checkpoint_raises_checkpoint_error(tmp_path):
    path = tmp_path / "ckpt.pth.tar"
    save_checkpoint(state(1.0), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_a_checkpoint_that_is_not_a_dict_is_refused(tmp_path):
    path = tmp_path / "list.pth.tar"
    save_checkpoint([1, 2], path)
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(path)


class CreatesAFileWhenUnpickled:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return open, (self.target, "w")


@pytest.mark.parametrize("writer", ["torch_zip", "plain_pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, writer):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    payload = {"model": CreatesAFileWhenUnpickled(target)}
    if writer == "torch_zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))  # the protocol of legacy torch files
    with pytest.raises(CheckpointError, match="refused as unsafe") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)
    assert not target.exists()
    assert "io.open" in str(error.value)  # the reason names the refused callable
