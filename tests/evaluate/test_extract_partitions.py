"""Extraction in bounded partitions: layout, readers of both layouts, restart after a kill."""
import json
import logging
import multiprocessing
import os
import signal

import numpy as np
import pytest
import torch

from real20m.evaluate import feature_partitions
from real20m.evaluate.encoder import Encoder
from real20m.evaluate.extract import ExtractionSettings, extract_features
from real20m.evaluate.feature_folder import partition_paths
from real20m.evaluate.feature_io import FeatureFileError, ShardedArray, load_features, read_rows, read_sample
from real20m.evaluate.feature_partitions import progress_path, verify_shards
from real20m.evaluate.search import search
from real20m.evaluate.search_config import SearchConfig
from tests.evaluate.feature_folders import write_one_shard_folder
from tests.evaluate.test_extract import FakeDataset, FakeModel, _env, collate

N_ITEMS, BATCH, PART = 23, 4, 8   # partitions of 8, 8 and 7 items, two batches each


class CountingModel(FakeModel):
    """FakeModel (same weights for the same seed) that counts its batches and can fail at one."""

    def __init__(self, fail_at=None, kill_at=None):
        super().__init__()
        self.calls, self.fail_at, self.kill_at = 0, fail_at, kill_at

    def encode_items(self, title_ids, title_mask, pixels):
        if self.calls == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.calls == self.fail_at:
            raise RuntimeError("simulated crash")
        self.calls += 1
        return super().encode_items(title_ids, title_mask, pixels)


def _model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return CountingModel(**kwargs)


def _extract(folder, model=None, n=N_ITEMS, world_size=1, **kwargs):
    """Run every rank in this process (rank 0 last: it writes meta.json once the others are done)."""
    settings = ExtractionSettings(**{"batch_size": BATCH, "partition_size": PART, **kwargs})
    model = model if model is not None else _model()
    count = None
    for rank in reversed(range(world_size)):
        env = _env(rank, world_size)
        count = extract_features(Encoder(model, env.device), FakeDataset(n), collate, env, str(folder), settings)
    return count


def _stats(folder):
    """(inode, mtime) of every file, by name."""
    return {name: (os.stat(folder / name).st_ino, os.stat(folder / name).st_mtime_ns)
            for name in sorted(os.listdir(folder))}


def _rows(features):
    """All rows of a FeatureSet as one array (a ShardedArray takes row slices only)."""
    return np.asarray(features.feats[0:len(features)])


def _same_features(a, b, atol=0.0):
    """Same ids and rows: bit for bit, or within ``atol`` where the items were embedded in batches
    of other sizes (a batched GEMM may round the last bit differently with the batch's shape)."""
    first, second = load_features(str(a)), load_features(str(b))
    assert np.array_equal(first.ids, second.ids)
    assert _rows(first).dtype == _rows(second).dtype
    if atol:
        np.testing.assert_allclose(_rows(first), _rows(second), rtol=0, atol=atol)
    else:
        assert np.array_equal(_rows(first).view(np.uint8), _rows(second).view(np.uint8))


def _partition_files(folder):
    return sorted(name for name in os.listdir(folder) if "_part" in name)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_partitions_equal_one_shot_extraction_bit_for_bit(tmp_path, dtype):
    one_shot = tmp_path / "one"
    assert _extract(one_shot, partition_size=1000, dtype=dtype) == N_ITEMS
    assert _partition_files(one_shot) == ["feats_rank0_part00000.npy", "ids_rank0_part00000.npy"]
    partitioned = tmp_path / "parts"
    assert _extract(partitioned, dtype=dtype) == N_ITEMS
    assert _partition_files(partitioned) == [f"{kind}_rank0_part{p:05d}.npy" for kind in ("feats", "ids")
                                             for p in range(3)]
    assert [len(np.load(partition_paths(str(partitioned), 0, p)[0])) for p in range(3)] == [8, 8, 7]
    meta = json.loads((partitioned / "meta.json").read_text())
    assert meta["format"] == "real20m-features-v2" and meta["partitions"] == {"0": [8, 8, 7]}
    assert meta["counts"] == {"0": 23} and meta["dtype"] == dtype and meta["dim"] == 4
    _same_features(one_shot, partitioned)
    features = load_features(str(partitioned))
    assert features.ids.tolist() == FakeDataset(N_ITEMS).pids.tolist()
    assert isinstance(features.feats, ShardedArray) and isinstance(features.feats.parts[0], np.memmap)
    # the same rows as embedding the items in batches of BATCH, without any partitioning
    model, dataset = _model(), FakeDataset(N_ITEMS)
    model.eval()
    with torch.no_grad():
        expected = np.concatenate([
            torch.nn.functional.normalize(model.encode_items(b["title_ids"], b["title_mask"], b["pixels"]).fused
                                          .float(), dim=-1).numpy()
            for b in (collate([dataset[i] for i in range(lo, min(lo + BATCH, N_ITEMS))])
                      for lo in range(0, N_ITEMS, BATCH))]).astype(dtype)
    assert np.array_equal(_rows(features), expected)


def test_partition_size_not_a_multiple_of_the_batch_size(tmp_path):
    seen = []
    model = _model()
    forward = model.encode_items
    model.encode_items = lambda ids, mask, pixels: (seen.append(len(ids)), forward(ids, mask, pixels))[1]
    assert _extract(tmp_path, model, partition_size=5) == N_ITEMS
    assert seen == [4, 1] * 4 + [3]          # batches never straddle two partitions
    assert verify_shards(str(tmp_path), FakeDataset(N_ITEMS).pids) == N_ITEMS
    np.testing.assert_allclose(_rows(load_features(str(tmp_path))),
                               _rows(load_features(str(_one_shot(tmp_path.parent / "ref")))), rtol=1e-6)


def _one_shot(folder):
    _extract(folder, partition_size=1000)
    return folder


def test_readers_return_the_same_rows_for_both_layouts(tmp_path):
    _extract(tmp_path / "new", world_size=3, partition_size=3)   # ranks of 7, 8, 8 items: partitions 3+3+1, 3+3+2
    meta = json.loads((tmp_path / "new" / "meta.json").read_text())
    assert meta["partitions"] == {"0": [3, 3, 1], "1": [3, 3, 2], "2": [3, 3, 2]}
    new = load_features(str(tmp_path / "new"))
    old_dir = str(tmp_path / "old")
    ids, feats = new.ids, _rows(new)
    write_one_shard_folder(old_dir, [(ids[lo:hi], feats[lo:hi]) for lo, hi in [(0, 7), (7, 15), (15, 23)]])
    old = load_features(old_dir)
    assert old.ids.tolist() == new.ids.tolist() == FakeDataset(N_ITEMS).pids.tolist()
    assert len(new.feats.parts) == 9 and len(old.feats.parts) == 3
    for start, stop in [(0, 23), (2, 11), (6, 7), (5, 20), (22, 23)]:
        assert np.array_equal(read_rows(new.feats, start, stop), read_rows(old.feats, start, stop))
    rows = [0, 3, 6, 7, 13, 22]
    assert np.array_equal(read_sample(new.feats, rows), read_sample(old.feats, rows))
    assert verify_shards(str(tmp_path / "new"), FakeDataset(N_ITEMS).pids) == N_ITEMS
    for chunk in (4, 1000):
        config = SearchConfig(chunk_size=chunk, use_gpu=False, show_progress=False)
        new_hits = search(new.feats[0:5], new.feats, 6, config)
        old_hits = search(old.feats[0:5], old.feats, 6, config)
        assert np.array_equal(new_hits[0], old_hits[0]) and np.array_equal(new_hits[1], old_hits[1])


def test_restart_after_a_crash_continues_with_the_first_missing_partition(tmp_path):
    reference = _one_shot(tmp_path / "reference")
    folder = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _extract(folder, _model(fail_at=5))   # partitions 0 and 1 done, the first batch of 2 embedded
    assert not (folder / "meta.json").exists()
    assert _partition_files(folder) == [f"{kind}_rank0_part{p:05d}.npy" for kind in ("feats", "ids") for p in (0, 1)]
    progress = json.loads((folder / "progress_rank0.json").read_text())
    assert [entry["count"] for entry in progress["partitions"]] == [8, 8] and progress["num_partitions"] == 3
    before = _stats(folder)
    model = _model()
    assert _extract(folder, model) == N_ITEMS
    assert model.calls == 2                        # only partition 2 was embedded
    after = _stats(folder)
    for name in _partition_files(folder):
        if "part00002" not in name:
            assert after[name] == before[name], name   # not rewritten
    _same_features(reference, folder)
    # a rerun of a finished extraction embeds nothing and leaves every partition alone
    model = _model()
    assert _extract(folder, model) == N_ITEMS and model.calls == 0
    assert {name: stat for name, stat in _stats(folder).items() if "_part" in name} == \
        {name: stat for name, stat in after.items() if "_part" in name}


def _killed_run(folder, kill_at=None, torn_part=None):
    """In a child process: extract, and die by SIGKILL at batch ``kill_at`` or while writing ``torn_part``."""
    if torn_part is not None:
        write = feature_partitions.write_feature_partition

        def write_then_die(out_dir, rank, part, ids, feats, dtype="float32"):
            if part == torn_part:   # the feats temporary is on disk, neither file of the pair is
                np.save(partition_paths(out_dir, rank, part)[1] + ".tmp.npy", feats)
                os.kill(os.getpid(), signal.SIGKILL)
            write(out_dir, rank, part, ids, feats, dtype)
        feature_partitions.write_feature_partition = write_then_die
    _extract(folder, _model(kill_at=kill_at))


@pytest.mark.parametrize("how", [{"kill_at": 3}, {"torn_part": 1}])
def test_restart_after_sigkill(tmp_path, how):
    reference = _one_shot(tmp_path / "reference")
    folder = tmp_path / "run"
    child = multiprocessing.get_context("spawn").Process(target=_killed_run, args=(folder,), kwargs=how)
    child.start()
    child.join(120)
    assert child.exitcode == -signal.SIGKILL
    assert _partition_files(folder)[:2] == ["feats_rank0_part00000.npy", "feats_rank0_part00001.npy.tmp.npy"] \
        if "torn_part" in how else _partition_files(folder) == ["feats_rank0_part00000.npy", "ids_rank0_part00000.npy"]
    before = _stats(folder)
    model = _model()
    assert _extract(folder, model) == N_ITEMS
    assert model.calls == 4                                  # partitions 1 and 2
    after = _stats(folder)
    for name in ("feats_rank0_part00000.npy", "ids_rank0_part00000.npy"):
        assert after[name] == before[name]
    assert not [name for name in os.listdir(folder) if "tmp" in name]
    _same_features(reference, folder)


def test_torn_or_unrecorded_partitions_are_redone(tmp_path):
    reference = _one_shot(tmp_path / "reference")
    folder = tmp_path / "run"
    _extract(folder)
    # partition 1 lost its ids file; partition 2 is on disk but the progress file does not list it
    # (killed between writing the pair and recording it); a temporary of a killed write is left over
    os.remove(partition_paths(str(folder), 0, 1)[0])
    progress = json.loads((folder / "progress_rank0.json").read_text())
    progress["partitions"] = progress["partitions"][:2]
    (folder / "progress_rank0.json").write_text(json.dumps(progress))
    (folder / "feats_rank0_part00002.npy.tmp.npy").write_bytes(b"torn")
    (folder / "progress_rank0.json.tmp").write_text("{")
    before = _stats(folder)
    model = _model()
    assert _extract(folder, model) == N_ITEMS
    assert model.calls == 4
    after = _stats(folder)
    assert all(after[name] == before[name] for name in ("feats_rank0_part00000.npy", "ids_rank0_part00000.npy"))
    assert after["feats_rank0_part00002.npy"] != before["feats_rank0_part00002.npy"]
    assert not [name for name in os.listdir(folder) if "tmp" in name]
    _same_features(reference, folder)


def test_a_damaged_partition_is_redone(tmp_path):
    folder = tmp_path / "run"
    _extract(folder)
    ids_path = partition_paths(str(folder), 0, 1)[0]
    np.save(ids_path, np.load(ids_path)[::-1].copy())       # not the pids this partition must hold
    model = _model()
    assert _extract(folder, model) == N_ITEMS and model.calls == 4
    _same_features(_one_shot(tmp_path / "reference"), folder)


@pytest.mark.parametrize("change", ["partition_size", "dataset", "model", "dtype", "resume_key"])
def test_a_different_extraction_starts_afresh(tmp_path, change, caplog):
    folder = tmp_path / "run"
    _extract(folder, resume_key={"checkpoint": "a"})
    n, seed, kwargs = N_ITEMS, 0, {"resume_key": {"checkpoint": "a"}}
    if change == "partition_size":
        kwargs["partition_size"] = 5
    elif change == "dataset":
        n = 21
    elif change == "model":
        seed = 1
    elif change == "dtype":
        kwargs["dtype"] = "float16"
    else:
        kwargs["resume_key"] = {"checkpoint": "b"}
    model = _model(seed)
    with caplog.at_level(logging.WARNING, logger="real20m.evaluate.extract"):
        assert _extract(folder, model, n=n, **kwargs) == n
    assert str(folder) in caplog.text and "different extraction" in caplog.text
    assert model.calls == (9 if change == "partition_size" else 6)   # batches [4, 1] x 4 + [3], or [4, 4] x 3
    expected = sorted(f"{kind}_rank0_part{p:05d}.npy" for kind in ("feats", "ids")
                      for p in range(len(range(0, n, kwargs.get("partition_size", PART)))))
    assert _partition_files(folder) == expected                 # no partition of the earlier run is left
    reference = tmp_path / "reference"
    _extract(reference, _model(seed), n=n, **kwargs)
    _same_features(reference, folder)


def test_a_different_world_size_starts_afresh_and_drops_the_extra_ranks(tmp_path):
    folder = tmp_path / "run"
    _extract(folder, world_size=3)
    model = _model()
    assert _extract(folder, model, world_size=2) == N_ITEMS
    assert model.calls == 6                       # ranks of 11 and 12 items: partitions 8 + 3 and 8 + 4
    assert not [name for name in os.listdir(folder) if "rank2" in name]
    assert json.loads((folder / "meta.json").read_text())["partitions"] == {"0": [8, 3], "1": [8, 4]}
    _same_features(_one_shot(tmp_path / "reference"), folder, atol=1e-6)


def test_extraction_over_a_folder_of_the_one_shard_layout(tmp_path):
    old = load_features(str(_one_shot(tmp_path / "reference")))
    folder = str(tmp_path / "run")
    write_one_shard_folder(folder, [(old.ids[:5], _rows(old)[:5]), (old.ids[5:], _rows(old)[5:])])
    assert _extract(folder) == N_ITEMS
    assert not os.path.exists(os.path.join(folder, "ids_rank0.npy")) and not os.path.exists(progress_path(folder, 1))
    assert not os.path.exists(os.path.join(folder, "ids_rank1.npy"))
    _same_features(tmp_path / "reference", folder)


def test_rank_without_items(tmp_path):
    assert _extract(tmp_path, n=2, world_size=3, partition_size=1) == 2
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["partitions"] == {"0": [], "1": [1], "2": [1]}
    assert load_features(str(tmp_path)).ids.tolist() == FakeDataset(2).pids.tolist()


def test_bad_partition_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="partition_size"):
        _extract(tmp_path, partition_size=0)


def test_a_full_disk_is_one_error_and_the_complete_partitions_stay_readable(tmp_path, monkeypatch):
    import errno

    reference = _one_shot(tmp_path / "reference")
    folder = tmp_path / "run"
    real_save, saved = np.save, []

    def full_at_the_third_partition(path, array, *args, **kwargs):
        saved.append(path)
        if len(saved) > 4:   # two complete partitions: feats + ids each
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(path, array, *args, **kwargs)
    monkeypatch.setattr(np, "save", full_at_the_third_partition)
    with pytest.raises(FeatureFileError, match=r"feats_rank0_part00002.npy: cannot write \(No space left on device\)"):
        _extract(folder)
    monkeypatch.undo()
    assert not [name for name in os.listdir(folder) if ".tmp" in name]
    assert _partition_files(folder) == [f"{kind}_rank0_part{p:05d}.npy" for kind in ("feats", "ids") for p in (0, 1)]
    model = _model()
    assert _extract(folder, model) == N_ITEMS and model.calls == 2   # the rerun continues at partition 2
    _same_features(reference, folder)
