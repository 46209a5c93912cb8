"""The legacy text reader: every value as float32(float(text)), fast or line by line, and strict."""
import numpy as np
import pytest

from real20m.evaluate import legacy_text
from real20m.evaluate.feature_io import FeatureFileError, read_legacy_features


def _write(path, rows, pid0=7):
    """Lines ``pid\\tv1,...`` from rows of value texts; returns the path as a string."""
    path.write_text("".join(f"{pid0 + i}\t{','.join(row)}\n" for i, row in enumerate(rows)))
    return str(path)


def _expected(rows):
    return np.array([[float(value) for value in row] for row in rows]).astype(np.float32)


def _assert_bitwise(loaded, rows):
    assert np.array_equal(loaded.feats.view(np.uint32), _expected(rows).view(np.uint32))


@pytest.fixture
def no_line_parser(monkeypatch):
    """Fail if a block goes to the exact line parser: the vectorised parser must take it."""
    def refuse(*args):
        raise AssertionError("the block went to the line parser")
    monkeypatch.setattr(legacy_text, "_parse_lines", refuse)


def test_a_million_random_values_read_as_float_of_their_text(tmp_path):
    rng = np.random.default_rng(0)
    unit = rng.standard_normal((500, 500)) / np.sqrt(500)                       # unit-norm features
    wide = rng.standard_normal((500, 500)) * 10.0 ** rng.integers(-44, 38, (500, 500))
    float32_texts = [[str(v) for v in row] for row in np.vstack([unit, wide]).astype(np.float32).tolist()]
    # float64 spellings (17 digits, off the float32 grid) and values next to float32 rounding midpoints
    doubles = [[repr(v) for v in row] for row in (rng.standard_normal((500, 500)) * 1e-2).tolist()]
    low = rng.standard_normal((500, 500)).astype(np.float32)
    midpoints = (low.astype(np.float64) + np.nextafter(low, np.float32(np.inf)).astype(np.float64)) / 2
    nudged = midpoints + rng.integers(-2, 3, midpoints.shape) * np.spacing(midpoints)
    near_ties = [[repr(v) for v in row] for row in nudged.tolist()]
    rows = float32_texts + doubles + near_ties
    loaded = read_legacy_features(_write(tmp_path / "million.feat", rows))
    assert loaded.feats.size == 1_000_000
    _assert_bitwise(loaded, rows)
    assert np.array_equal(loaded.ids, np.arange(len(rows)) + 7)


def test_the_original_spelling_of_unit_norm_features_takes_the_vectorised_parser(tmp_path, no_line_parser):
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((300, 64)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    feats[0, :6] = [-0.0, 0.0, 1.4e-45, -1e-5, 3.5e-5, 0.5]   # zeros, subnormal, exponent forms
    rows = [[str(v) for v in row] for row in feats.tolist()]
    assert rows[0][:3] + rows[0][5:6] == ["-0.0", "0.0", "1.401298464324817e-45", "0.5"]
    assert rows[0][3].endswith("e-06") and rows[0][4].endswith("e-05")
    loaded = read_legacy_features(_write(tmp_path / "unit.feat", rows))
    _assert_bitwise(loaded, rows)
    assert np.signbit(loaded.feats[0, 0]) and not np.signbit(loaded.feats[0, 1])


def test_values_next_to_float32_rounding_midpoints_take_the_vectorised_parser_and_round_as_float(
        tmp_path, no_line_parser):
    low = np.random.default_rng(5).standard_normal((40, 50)).astype(np.float32)
    midpoints = (low.astype(np.float64) + np.nextafter(low, np.float32(np.inf)).astype(np.float64)) / 2
    steps = np.arange(-25, 25).reshape(1, 50) % 5 - 2                  # -2..2 doubles off the midpoint
    rows = [[repr(v) for v in row] for row in (midpoints + steps * np.spacing(midpoints)).tolist()]
    _assert_bitwise(read_legacy_features(_write(tmp_path / "ties.feat", rows)), rows)


def test_fixed_width_files_of_earlier_versions_take_the_vectorised_parser(tmp_path, no_line_parser):
    feats = np.random.default_rng(2).standard_normal((50, 16)).astype(np.float32) * 100
    feats[0, :3] = [0.0, -1.5e-38, 3.4e38]
    rows = [["%+.8e" % v for v in row] for row in feats]
    path = tmp_path / "fixed.feat"
    pids = [i + 10 ** (i % 7) for i in range(len(rows))]   # lines of different lengths
    path.write_text("".join(f"{pid}\t{','.join(row)}\n" for pid, row in zip(pids, rows)))
    _assert_bitwise(read_legacy_features(str(path)), rows)


@pytest.mark.parametrize("token", ["1e-05", "1.5e+20", "2E-3", "1.5e-100", "12.5", "-123456.0", "+0.25", ".5", "7.",
                                   "0.0000000000000000000123", "1234567890123456789.0",
                                   "1.000000059604644775390625", "1.000000178813934326171875", "16777217.0"])
def test_other_decimal_spellings_read_as_float_of_their_text(tmp_path, token):
    rows = [["0.1", token, "-0.2"], [token, "0.3", "0.4"]]
    _assert_bitwise(read_legacy_features(_write(tmp_path / "other.feat", rows)), rows)


@pytest.mark.parametrize("token", ["nan", "inf", "-inf", "NaN", "1_0", " 0.5", "0x1p3", "", "1.2.3", "--1", "e5"])
def test_a_value_that_is_not_a_decimal_number_is_refused_with_its_line(tmp_path, token):
    rows = [["0.1", "0.2"]] * 4 + [["0.3", token]] + [["0.5", "0.6"]]
    with pytest.raises(FeatureFileError, match=rf"bad\.feat:5: value '{token}' is not a decimal number"):
        read_legacy_features(_write(tmp_path / "bad.feat", rows))


def test_a_value_outside_the_float32_range_is_refused_with_its_line(tmp_path):
    rows = [["0.1", "0.2"], ["3.5e+38", "0.2"]]
    with pytest.raises(FeatureFileError, match=r"big\.feat:2: value '3.5e\+38' is outside the float32 range"):
        read_legacy_features(_write(tmp_path / "big.feat", rows))


def test_a_truncated_last_line_of_shortest_spellings_is_refused_with_its_line(tmp_path):
    rows = [[str(v) for v in row] for row in np.random.default_rng(3).random((40, 8)).astype(np.float32).tolist()]
    path = _write(tmp_path / "cut.feat", rows)
    with open(path, "rb+") as f:
        f.truncate(len(f.read()) - 9)
    with pytest.raises(FeatureFileError, match=r"cut\.feat:40: line is truncated"):
        read_legacy_features(path)


@pytest.mark.parametrize("pid, ok", [("1234567890123456789", True), ("9223372036854775808", False), ("12a", False)])
def test_pids_up_to_int64_are_read_and_others_refused(tmp_path, pid, ok):
    path = tmp_path / "pid.feat"
    path.write_text(f"1\t0.5,0.25\n{pid}\t0.5,0.25\n")
    if ok:
        assert read_legacy_features(str(path)).ids.tolist() == [1, int(pid)]
    else:
        with pytest.raises(FeatureFileError, match=r"pid\.feat:2: pid is not a non-negative 64-bit integer"):
            read_legacy_features(str(path))


def test_blocks_that_split_lines_and_lines_longer_than_a_block(tmp_path, monkeypatch):
    monkeypatch.setattr(legacy_text, "READ_BLOCK_BYTES", 700)   # lines of ~600 to ~1200 bytes
    rng = np.random.default_rng(4)
    rows = [[str(v) for v in row] for row in rng.standard_normal((30, 40)).astype(np.float32).tolist()]
    rows[7] = [repr(v) for v in rng.standard_normal(40).tolist()]   # a line of 17-digit values
    path = tmp_path / "blocks.feat"
    pids = [(i + 1) * 10 ** (i % 12) for i in range(len(rows))]
    path.write_text("".join(f"{pid}\t{','.join(row)}\n" for pid, row in zip(pids, rows)))
    loaded = read_legacy_features(str(path))
    _assert_bitwise(loaded, rows)
    assert loaded.ids.tolist() == pids
