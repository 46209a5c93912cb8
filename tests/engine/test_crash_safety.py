"""Checkpoints survive a crash while saving, and bad or hostile checkpoint files never load.

* a process SIGKILLed in the middle of writing a checkpoint leaves the previous last.pth.tar intact;
* a truncated or corrupt file is a CheckpointError naming the path, also through
  ``main_cross_domain_emb.py --resume``: one line on stderr, exit status 2, no traceback;
* a pickle that would run code (create a file) when loaded is refused and creates nothing;
* exported weights are safetensors (no pickle at all).
"""
import json
import pickle
import re
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from real20m.datasets.synthetic import generate
from real20m.engine.checkpoint import CheckpointManager
from real20m.utils.checkpoint_io import CheckpointError, load_checkpoint

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120

# Saves one checkpoint, then dies (SIGKILL, no clean-up of any kind) with the second one half written.
KILLED_WHILE_SAVING = textwrap.dedent("""
    import io, os, signal, sys
    import torch
    from real20m.engine.checkpoint import CheckpointManager

    manager = CheckpointManager(sys.argv[1])
    manager.save({"model": {"w": torch.full((256, 256), 1.0)}, "global_step": 10}, epoch=0, step=10)
    real_save = torch.save

    def write_half_then_die(obj, file, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        file.write(buffer.getvalue()[: buffer.tell() // 2])
        file.flush()
        os.fsync(file.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = write_half_then_die
    manager.save({"model": {"w": torch.full((256, 256), 2.0)}, "global_step": 20}, epoch=0, step=20)
""")


class CreatesAFileWhenUnpickled:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return open, (self.target, "w")


def run_main(*args, cwd):
    command = [sys.executable, str(REPO / "main_cross_domain_emb.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=cwd)


def tiny_args(data_root, output_dir, *extra):
    return ["--config", str(REPO / "configs" / "tiny.yaml"), "--data_root", str(data_root), "--output_dir",
            str(output_dir), "--batch_size", "4", "--workers", "0", "--image_size", "32", "--vocab_size", "300",
            *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data root, checkpoint of a one-step training run)."""
    root = tmp_path_factory.mktemp("crash_safety")
    generate(str(root / "data"), seed=0, num_queries=16, num_test_queries=4, goods_per_query=2,
             videos_per_query=2, frames_per_video=5, image_size=32)
    result = run_main(*tiny_args(root / "data", root / "run", "--max_steps", "1"), cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "data", root / "run" / "checkpoints" / "last.pth.tar"


def assert_one_clear_line(result, *fragments):
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0]


def test_sigkill_while_writing_keeps_the_previous_last_checkpoint(tmp_path):
    result = subprocess.run([sys.executable, "-c", KILLED_WHILE_SAVING, str(tmp_path)], capture_output=True,
                            text=True, timeout=TIMEOUT_S, cwd=REPO)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]

    manager = CheckpointManager(tmp_path)
    assert manager.latest() == tmp_path / "last.pth.tar"
    assert [path.name for path in manager.numbered_checkpoints()] == ["checkpoint_0_10.pth.tar"]
    last = load_checkpoint(manager.latest())
    assert last["global_step"] == 10 and torch.equal(last["model"]["w"], torch.full((256, 256), 1.0))

    # The half-written file is still there under its hidden temporary name: loading it fails clearly.
    leftovers = [path for path in tmp_path.iterdir() if path.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".checkpoint_0_20.pth.tar.")
    with pytest.raises(CheckpointError, match="truncated or corrupt") as error:
        load_checkpoint(leftovers[0])
    assert str(leftovers[0]) in str(error.value)


@pytest.mark.parametrize("mode", ["train", "evaluate"])
def test_truncated_checkpoint_given_to_resume_exits_with_one_clear_line(trained, tmp_path, mode):
    data_root, checkpoint = trained
    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    extra = ["--evaluate", "--test_file", str(data_root / "test_file" / "goods_gallery.txt")] \
        if mode == "evaluate" else []
    result = run_main(*tiny_args(data_root, tmp_path / "out", "--resume", str(truncated), *extra), cwd=tmp_path)
    assert_one_clear_line(result, str(truncated), "truncated or corrupt")
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize("mode", ["train", "evaluate"])
def test_malicious_pickle_given_to_resume_is_refused_and_creates_nothing(trained, tmp_path, mode):
    data_root, _ = trained
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pth.tar"
    torch.save({"model": CreatesAFileWhenUnpickled(target), "optimizer": {}}, evil)
    extra = ["--evaluate", "--test_file", str(data_root / "test_file" / "goods_gallery.txt")] \
        if mode == "evaluate" else []
    result = run_main(*tiny_args(data_root, tmp_path / "out", "--resume", str(evil), *extra), cwd=tmp_path)
    assert_one_clear_line(result, str(evil), "refused as unsafe", "io.open")
    assert not target.exists()


def test_plain_pickle_checkpoint_is_refused_too(tmp_path):
    target = tmp_path / "pwned"
    evil = tmp_path / "legacy.pth.tar"
    evil.write_bytes(pickle.dumps({"state_dict": CreatesAFileWhenUnpickled(target)}, protocol=2))
    with pytest.raises(CheckpointError, match="refused as unsafe"):
        load_checkpoint(evil)
    assert not target.exists()


def test_training_checkpoints_hold_only_weights_only_types(trained):
    _, checkpoint = trained
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)  # raises on anything else
    assert {"model", "optimizer", "rng", "epoch", "global_step"} <= state.keys()


def test_exported_weights_are_safetensors(trained, tmp_path):
    _, checkpoint = trained
    out = tmp_path / "converted"
    result = subprocess.run([sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), str(checkpoint),
                             str(out)], capture_output=True, text=True, timeout=TIMEOUT_S, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(path.name for path in out.iterdir()) == ["config.json", "model.safetensors"]
    raw = (out / "model.safetensors").read_bytes()
    header_size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + header_size])  # the safetensors layout: a JSON header, then raw tensors
    expected = load_checkpoint(checkpoint)["model"]
    with safe_open(str(out / "model.safetensors"), framework="pt") as weights:
        assert set(weights.keys()) == set(header) - {"__metadata__"}
        name = next(iter(weights.keys()))
        assert torch.equal(weights.get_tensor(name), expected[name])
    assert isinstance(json.loads((out / "config.json").read_text(encoding="utf-8")), dict)


def test_a_full_disk_while_saving_is_one_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno
    import os

    manager = CheckpointManager(tmp_path)
    manager.save({"global_step": 10}, epoch=0, step=10)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(CheckpointError, match=r"checkpoint_0_20.pth.tar: cannot write the checkpoint "
                                              r"\(No space left on device\); the previous checkpoints are unchanged"):
        manager.save({"global_step": 20}, epoch=0, step=20)
    assert load_checkpoint(manager.last_path)["global_step"] == 10
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint_0_10.pth.tar", "last.pth.tar"]


def test_a_full_disk_during_training_stops_with_one_line(tmp_path, monkeypatch, capsys):
    import errno
    import os

    from real20m.cli.train import main

    data = tmp_path / "data"
    generate(str(data), seed=0, num_queries=8, num_test_queries=2, num_val_queries=2, goods_per_query=2,
             videos_per_query=2, frames_per_video=5, image_size=32)
    real_save, calls = torch.save, []

    def full_after_the_first(obj, file, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, file, *args, **kwargs)
    monkeypatch.setattr(torch, "save", full_after_the_first)
    with pytest.raises(SystemExit) as stopped:
        main(["--config", "tiny", "--data_root", str(data), "--output_dir", str(tmp_path / "run"), "--workers", "0",
              "--batch_size", "4", "--image_size", "32", "--vocab_size", "300", "--max_steps", "2",
              "--save_freq", "1"])
    assert stopped.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(r"error: .*/checkpoint_\d+_2\.pth\.tar: cannot write the checkpoint \(No space left on "
                        r"device\); the previous checkpoints are unchanged", line), line
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pth.tar")["global_step"] == 1


def test_a_training_checkpoint_missing_part_of_its_state_is_one_line(trained, tmp_path):
    data_root, checkpoint = trained
    state = load_checkpoint(checkpoint)
    del state["criterion"]
    broken = tmp_path / "partial.pth.tar"
    torch.save(state, broken)
    result = run_main(*tiny_args(data_root, tmp_path / "run", "--resume", str(broken)), cwd=tmp_path)
    assert_one_clear_line(result, f"{broken}: a training checkpoint without criterion: it cannot be resumed")
