import json

import numpy as np
import pytest

from real20m.evaluate.feature_io import (FeatureFileError, ShardedArray, load_features, read_legacy_features,
                                         write_legacy_features)
from tests.evaluate.feature_folders import write_one_shard_folder


def _features(n=50, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, dim)).astype(np.float32)
    feats[0, :4] = [0.0, 1e-30, -3.4e38, 1.4e-45]   # zero, tiny, huge and subnormal values
    return np.arange(n, dtype=np.int64) * 37 + 5, feats


def test_legacy_round_trip_is_bitwise(tmp_path):
    ids, feats = _features()
    path = str(tmp_path / "features.feat")
    write_legacy_features(path, ids, feats)
    loaded = load_features(path)
    assert np.array_equal(loaded.ids, ids)
    assert loaded.feats.dtype == np.float32
    assert np.array_equal(loaded.feats.view(np.uint32), feats.view(np.uint32))
    first = open(path).readline()
    assert first.startswith("5\t") and first.count(",") == 7


def test_legacy_writer_spells_values_as_the_original_and_as_json_numbers(tmp_path):
    ids, feats = _features(n=20, dim=6)
    feats[1] = [1e-5, 1e16, -0.0, 123456.0, 3.4028235e38, 0.1]   # exponent and positional spellings
    path = tmp_path / "features.feat"
    write_legacy_features(str(path), ids, feats)
    for line, pid, row in zip(path.read_text().splitlines(), ids.tolist(), feats.tolist()):
        pid_text, values = line.split("\t")
        assert int(pid_text) == pid
        assert values == ",".join(str(float(value)) for value in row)
        assert np.array_equal(np.array(json.loads("[" + values + "]"), np.float32), np.array(row, np.float32))


def test_legacy_reader_accepts_free_form_floats(tmp_path):
    path = tmp_path / "old.feat"
    path.write_text("12\t0.5,-1.25,3e-3\n7\t1,2,3.0000001\n")
    loaded = read_legacy_features(str(path))
    assert loaded.ids.tolist() == [12, 7]
    assert np.array_equal(loaded.feats, np.array([[0.5, -1.25, 3e-3], [1, 2, 3.0000001]], np.float32))


def test_truncated_last_line_names_file_and_line(tmp_path):
    ids, feats = _features(n=3)
    path = str(tmp_path / "f.feat")
    write_legacy_features(path, ids, feats)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-20])
    with pytest.raises(FeatureFileError, match=r"f\.feat:3: line is truncated"):
        load_features(path)


def test_wrong_dimension_names_file_and_line(tmp_path):
    path = tmp_path / "f.feat"
    path.write_text("1\t0.1,0.2,0.3\n2\t0.1,0.2,0.3\n3\t0.1,0.2\n")
    with pytest.raises(FeatureFileError, match=r"f\.feat:3: expected 3 values, found 2: '3\\t0.1,0.2'"):
        load_features(str(path))


def test_bad_value_names_file_and_line(tmp_path):
    path = tmp_path / "f.feat"
    path.write_text("1\t0.1,0.2\n2\t0.1,abc\n")
    with pytest.raises(FeatureFileError, match=r"f\.feat:2: value 'abc' is not a decimal number"):
        load_features(str(path))


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.feat"
    path.write_text("")
    with pytest.raises(FeatureFileError, match="empty.feat: empty feature file"):
        load_features(str(path))


def test_legacy_repeats_with_identical_vectors_are_dropped_with_one_warning(tmp_path, caplog):
    # The original's DistributedSampler pads with repeated items: its files list those pids twice.
    path = tmp_path / "dup.feat"
    path.write_text("1\t0.1,0.2\n2\t0.5,0.25\n1\t0.1,0.2\n3\t1.0,2.0\n2\t0.5,0.25\n1\t0.10,0.2\n")
    with caplog.at_level("WARNING"):
        loaded = load_features(str(path))
    assert loaded.ids.tolist() == [1, 2, 3] and loaded.repeated_rows == 3
    assert np.array_equal(loaded.feats, np.array([[0.1, 0.2], [0.5, 0.25], [1.0, 2.0]], np.float32))
    warnings = [record for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1 and "dup.feat: dropped 3 repeated lines" in warnings[0].getMessage()


def test_legacy_repeats_with_differing_vectors_name_pid_and_both_lines(tmp_path):
    path = tmp_path / "dup.feat"
    path.write_text("1\t0.1,0.2\n7\t0.5,0.5\n1\t0.1,0.2\n7\t0.5,0.50000006\n")
    with pytest.raises(FeatureFileError, match=r"dup\.feat:4: pid 7 also on line 2 with a different vector"):
        load_features(str(path))


def test_shards_load_memory_mapped_and_merged(tmp_path):
    ids, feats = _features(n=30)
    feats[0] = 0.5   # keep the float16 copy finite
    meta = write_one_shard_folder(tmp_path, [(ids[:10], feats[:10]), (ids[10:], feats[10:])], dtype="float16")
    assert meta["counts"] == {"0": 10, "1": 20} and meta["dtype"] == "float16" and meta["dim"] == 8
    loaded = load_features(str(tmp_path))
    assert isinstance(loaded.feats, ShardedArray) and loaded.feats.shape == (30, 8)
    assert isinstance(loaded.feats.parts[0], np.memmap)
    assert np.array_equal(loaded.ids, ids)
    assert np.array_equal(loaded.feats[5:15], feats[5:15].astype(np.float16))
    assert np.array_equal(loaded.feats.take_rows([2, 9, 10, 29]), feats[[2, 9, 10, 29]].astype(np.float16))


def test_shard_merge_detects_duplicates(tmp_path):
    ids, feats = _features(n=20)
    write_one_shard_folder(tmp_path, [(ids[:12], feats[:12]), (ids[8:], feats[8:])])
    with pytest.raises(FeatureFileError, match=r"4 pids appear more than once \(e.g. \[301, 338, 375, 412\]\)"):
        load_features(str(tmp_path))


def test_legacy_round_trip_over_many_read_blocks(tmp_path, monkeypatch):
    from real20m.evaluate import legacy_text
    monkeypatch.setattr(legacy_text, "READ_BLOCK_BYTES", 5000)   # many blocks, lines split across them
    ids, feats = _features(n=400, dim=24, seed=3)
    ids[::9] += 10**9                                           # pid width changes: mixed line lengths
    path = str(tmp_path / "many.feat")
    write_legacy_features(path, ids, feats)
    loaded = read_legacy_features(path)
    assert np.array_equal(loaded.ids, ids)
    assert np.array_equal(loaded.feats.view(np.uint32), feats.view(np.uint32))


def _awkward_float32(n, dim, seed):
    """Random float32 rows over the whole range: tiny, huge, subnormal, negative zero, powers of two."""
    rng = np.random.default_rng(seed)
    feats = (rng.standard_normal((n, dim)) * 10.0 ** rng.integers(-44, 38, (n, dim))).astype(np.float32)
    feats[~np.isfinite(feats)] = 3.4028235e38
    feats[0, :12] = [-0.0, 0.0, 1.4e-45, -2.8e-45, 1.1754942e-38, 3.4028235e38, -1e-5, 1.5e-7, 1e16, 0.5, 1.0, 1e-4]
    feats[1] = rng.standard_normal(dim).astype(np.float32) / np.sqrt(dim)        # typical unit-norm values
    bits = rng.integers(0, 2**32, (n // 4, dim), dtype=np.uint64).astype(np.uint32).view(np.float32)
    feats[2:2 + n // 4] = np.where(np.isfinite(bits), bits, np.float32(-1.25))    # random bit patterns
    return feats


@pytest.mark.parametrize("seed", [0, 1])
def test_writer_text_is_str_of_float_for_every_value_and_reads_back_bitwise(tmp_path, seed):
    feats = _awkward_float32(400, 64, seed)
    ids = np.arange(len(feats), dtype=np.int64) * 1000003 + 7
    path = tmp_path / "awkward.feat"
    write_legacy_features(str(path), ids, feats, rows_per_block=100)
    expected = "".join(f"{pid}\t" + ",".join(str(float(value)) for value in row) + "\n"
                       for pid, row in zip(ids.tolist(), feats.tolist()))
    assert path.read_bytes() == expected.encode("ascii")
    loaded = read_legacy_features(str(path))
    assert np.array_equal(loaded.ids, ids)
    assert np.array_equal(loaded.feats.view(np.uint32), feats.view(np.uint32))


def test_fast_reader_takes_the_original_spelling_and_unusual_tokens_alike(tmp_path):
    # Tokens with a dot (the fast path): exponent forms, signs, values next to float32 rounding ties.
    path = tmp_path / "mixed.feat"
    tokens = ["0.1", "-1.5e-07", "1.0000000596046448", "1.0000000596046449", "3.4028235e+38", "-0.0",
              "9.999999747378752e-06", "16777217.0"]
    path.write_text(f"5\t{','.join(tokens)}\n6\t{','.join(reversed(tokens))}\n")
    loaded = read_legacy_features(str(path))
    expected = np.array([float(token) for token in tokens], np.float32)
    assert np.array_equal(loaded.feats.view(np.uint32), np.stack([expected, expected[::-1]]).view(np.uint32))
