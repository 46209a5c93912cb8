"""Feature files: the native sharded binary format and the legacy text format.

Native format: a folder with one pair of ``.npy`` files per writer rank
(``ids_rank<r>.npy`` int64 and ``feats_rank<r>.npy`` float32/float16) plus a
``meta.json`` with the dimension, dtype and the row count of every shard.
Shards are memory-mapped on load and read a chunk at a time (``read_rows``), the pages of each
chunk released after use, so a 20M-item gallery is never resident whole.

Legacy format: ``pid \\t f1,f2,...,fD`` one item a line, as the original
release wrote them. We write every value as a fixed-width ``%+.8e`` token
(nine significant digits: enough to parse float32 back bitwise). Fixed width
lets the reader parse whole blocks with a handful of vectorised byte
operations; files written by other tools take a slower general path.
"""

import collections
import functools
import json
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

META_FILE = "meta.json"
FORMAT_NAME = "real20m-features-v1"
SUPPORTED_DTYPES = ("float32", "float16")

TOKEN_WIDTH = 16            # "+1.23456789e-02" plus the separator
READ_BLOCK_BYTES = 1 << 20  # small blocks keep parse temporaries in cache and out of the RSS peak
PARSE_THREADS = 2
PARSE_ROWS = 64              # rows parsed per vectorised pass (~0.3 MB of temporaries at D=512)


class FeatureFileError(ValueError):
    """A feature file or folder that cannot be read; the message names it."""


@dataclass
class FeatureSet:
    ids: np.ndarray         # (N,) int64
    feats: object           # (N, D): ndarray, np.memmap or ShardedArray
    source: str

    def __len__(self):
        return len(self.ids)

    @property
    def dim(self):
        return self.feats.shape[1]


class ShardedArray:
    """Row-wise concatenation of memory-mapped shards without copying them.

    Supports what search needs: ``shape``, ``dtype``, ``len`` and row slices.
    """

    def __init__(self, parts):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.offsets[-1]), parts[0].shape[1])
        self.dtype = parts[0].dtype

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, rows):
        if not isinstance(rows, slice):
            raise TypeError("ShardedArray supports row slices only")
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise TypeError("ShardedArray supports contiguous row slices only")
        pieces = []
        for part, offset in zip(self.parts, self.offsets[:-1]):
            lo, hi = max(start - offset, 0), min(stop - offset, len(part))
            if lo < hi:
                pieces.append(part[lo:hi])
        if len(pieces) == 1:
            return pieces[0]
        if not pieces:
            return np.empty((0, self.shape[1]), self.dtype)
        return np.concatenate(pieces)

    def take_rows(self, rows):
        """Rows at sorted indices ``rows`` (e.g. a random training sample), as one array."""
        rows = np.asarray(rows, dtype=np.int64)
        owner = np.searchsorted(self.offsets, rows, side="right") - 1
        return np.concatenate([self.parts[p][rows[owner == p] - self.offsets[p]] for p in np.unique(owner)])


def _open_mappings(array):
    parts = array.parts if isinstance(array, ShardedArray) else [array]
    mappings = (getattr(part, "_mmap", None) for part in parts)
    return [mapping for mapping in mappings if mapping is not None and not mapping.closed]


def release_mapped_pages(array):
    """Drop the pages of a memory-mapped array (or of every part of a ShardedArray) from this process.

    Pages of a read-only file mapping stay resident, and counted in the process's RSS, until the
    kernel needs the memory; one pass over a 20 GB gallery would look like a 20 GB process. The
    mappings are clean, so dropping them loses nothing: the next read faults them back in (usually
    from the page cache). Arrays that are not memory-mapped are left alone.
    """
    for mapping in _open_mappings(array):
        mapping.madvise(mmap.MADV_DONTNEED)


def read_rows(array, start, stop):
    """Rows ``[start, stop)`` as a contiguous float32 array.

    From a memory-mapped array this is always a copy (never a view into the mapping), and the
    mapped pages it read are released afterwards, so streaming a gallery keeps one chunk resident.
    """
    if not _open_mappings(array):
        return np.ascontiguousarray(array[start:stop], dtype=np.float32)
    rows = np.array(array[start:stop], dtype=np.float32, order="C")
    release_mapped_pages(array)
    return rows


def read_sample(array, rows):
    """Rows at sorted indices ``rows`` (e.g. a training sample) as one float32 array, pages released."""
    sample = array.take_rows(rows) if isinstance(array, ShardedArray) else array[np.asarray(rows)]
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    release_mapped_pages(array)
    return sample


# --------------------------------------------------------------------- native shards

def _shard_paths(out_dir, rank):
    return (os.path.join(out_dir, f"ids_rank{rank}.npy"),
            os.path.join(out_dir, f"feats_rank{rank}.npy"))


def _save_npy_atomic(path, array):
    tmp = path + ".tmp.npy"
    np.save(tmp, array)
    os.replace(tmp, path)


def write_feature_shard(out_dir, rank, ids, feats, dtype="float32"):
    """Write one rank's shard; files appear atomically so readers never see half a shard."""
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype!r}")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    feats = np.ascontiguousarray(feats, dtype=dtype)
    if feats.ndim != 2 or len(feats) != len(ids):
        raise ValueError(f"feats must be (N, D) with N = len(ids) = {len(ids)}, got {feats.shape}")
    os.makedirs(out_dir, exist_ok=True)
    ids_path, feats_path = _shard_paths(out_dir, rank)
    _save_npy_atomic(feats_path, feats)
    _save_npy_atomic(ids_path, ids)


def write_feature_meta(out_dir, world_size):
    """Describe the shards of ranks 0..world_size-1 in meta.json (called once, after all wrote)."""
    counts, dim, dtype = {}, None, None
    for rank in range(world_size):
        ids_path, feats_path = _shard_paths(out_dir, rank)
        feats = np.load(feats_path, mmap_mode="r")
        ids = np.load(ids_path, mmap_mode="r")
        if len(ids) != len(feats):
            raise FeatureFileError(f"{feats_path}: {len(feats)} rows but {ids_path} has {len(ids)} ids")
        counts[str(rank)] = int(len(ids))
        if len(ids) == 0:   # a rank with no items says nothing about dim or dtype
            continue
        dim = feats.shape[1] if dim is None else dim
        dtype = str(feats.dtype) if dtype is None else dtype
        if feats.shape[1] != dim or str(feats.dtype) != dtype:
            raise FeatureFileError(f"{feats_path}: shape {feats.shape} {feats.dtype} differs from rank 0 ({dim}, {dtype})")
    if dim is None:
        raise FeatureFileError(f"{out_dir}: all {world_size} shards are empty")
    meta = {"format": FORMAT_NAME, "dim": int(dim), "dtype": dtype, "counts": counts}
    write_json_atomic(os.path.join(out_dir, META_FILE), meta)
    return meta


def write_json_atomic(path, value):
    """Write ``value`` as JSON to a temporary file, then rename it: readers see all of it or nothing."""
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1)
    os.replace(path + ".tmp", path)


def read_json(path, error_class, what):
    """Parsed JSON of ``path``; a missing or malformed file raises ``error_class`` naming it."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise error_class(f"{path}: cannot read {what}: {error}") from error


def _check_unique_ids(ids, source):
    unique, counts = np.unique(ids, return_counts=True)
    duplicated = unique[counts > 1]
    if len(duplicated):
        raise FeatureFileError(
            f"{source}: {len(duplicated)} pids appear more than once "
            f"(e.g. {duplicated[:5].tolist()}); every item must be written exactly once")


def load_shard_folder(folder):
    meta = read_json(os.path.join(folder, META_FILE), FeatureFileError, "feature meta file")
    id_parts, feat_parts = [], []
    for rank, count in sorted(meta["counts"].items(), key=lambda kv: int(kv[0])):
        ids_path, feats_path = _shard_paths(folder, int(rank))
        ids = np.load(ids_path, mmap_mode="r")
        feats = np.load(feats_path, mmap_mode="r")
        if count == 0 and len(ids) == 0:
            continue
        if len(ids) != count or feats.shape != (count, meta["dim"]) or str(feats.dtype) != meta["dtype"]:
            raise FeatureFileError(
                f"{feats_path}: shard holds {len(ids)} ids and {feats.shape} {feats.dtype} features, "
                f"meta.json says {count} x {meta['dim']} {meta['dtype']}")
        id_parts.append(np.asarray(ids))
        feat_parts.append(feats)
    ids = np.concatenate(id_parts).astype(np.int64, copy=False)
    _check_unique_ids(ids, folder)
    feats = feat_parts[0] if len(feat_parts) == 1 else ShardedArray(feat_parts)
    return FeatureSet(ids=ids, feats=feats, source=folder)


def load_features(path):
    """A shard folder (memory-mapped) or a legacy text file -> FeatureSet."""
    if os.path.isdir(path):
        return load_shard_folder(path)
    if not os.path.isfile(path):
        raise FeatureFileError(f"{path}: no such feature file or folder")
    return read_legacy_features(path)


# --------------------------------------------------------------------- legacy text: writing
#
# The original wrote str(float(v)) for every float32 value v: the shortest decimal that reads back
# as the same double (and so the same float32). Python formats about two million values a second,
# which would make a 20M-item export take hours, so the digits are computed here with numpy:
# v * 10**s in double-double arithmetic (exact to ~1e-14 at 17 integer digits), then the fewest
# digits whose nearest decimal stays inside v's rounding interval. The few values too close to a
# decision to trust (and zeros, powers of two) are formatted by str() itself.

SIGNIFICANT = 17              # digits that always identify a double
POW10_RANGE = range(-30, 70)  # decimal scales s; float32 magnitudes need about -23..62
TOKEN_BYTES = 24              # the longest token, "-1.2345678901234567e-45", and its separator
DECISION_MARGIN = 1e-9        # closer than this to a rounding decision: let str() decide


def _double_double(value):
    high = float(value)
    return high, float(value - Fraction(high))


_POW10_DD = np.array([_double_double(Fraction(10) ** s) for s in POW10_RANGE])   # rows: (high, low)
_POW10_INT = 10 ** np.arange(SIGNIFICANT + 1, dtype=np.int64)
_FOUR_DIGITS = np.array([list(b"%04d" % i) for i in range(10000)], np.uint8)


def _split(a):
    """Dekker's split of doubles into two halves of at most 26 bits each."""
    c = 134217729.0 * a   # 2**27 + 1
    high = c - (c - a)
    return high, a - high


def _scaled(magnitude, scale):
    """magnitude * 10**scale as (int64 integer part, fraction in [0, 1)), exact to ~1e-14."""
    high, low = _POW10_DD[scale - POW10_RANGE.start].T
    product = magnitude * high
    m_high, m_low = _split(magnitude)
    p_high, p_low = _split(high)
    error = ((m_high * p_high - product) + m_high * p_low + m_low * p_high) + m_low * p_low
    rest = error + magnitude * low
    whole = np.floor(rest)
    return product.astype(np.int64) + whole.astype(np.int64), rest - whole


def _half_ulp_scaled(magnitude, scale):
    """Half the double spacing at each value, times 10**scale (the radius of its rounding interval)."""
    _, binary_exponent = np.frexp(magnitude)
    high, low = _POW10_DD[scale - POW10_RANGE.start].T
    return np.ldexp(high, binary_exponent - 54) + np.ldexp(low, binary_exponent - 54)


def _seventeen_digits(magnitude):
    """Each positive double as 17-digit integer part, fraction and decimal exponent."""
    exponent10 = np.floor(np.log10(magnitude)).astype(np.int64)
    number, fraction = _scaled(magnitude, SIGNIFICANT - 1 - exponent10)
    # log10 can be one off next to a power of ten: rescale those to exactly 17 integer digits.
    for shift, off in ((1, number >= _POW10_INT[SIGNIFICANT]), (-1, number < _POW10_INT[SIGNIFICANT - 1])):
        if off.any():
            exponent10[off] += shift
            number[off], fraction[off] = _scaled(magnitude[off], SIGNIFICANT - 1 - exponent10[off])
    return number, fraction, exponent10


def _shortest_digits(magnitude):
    """repr digits of positive doubles: (digits int64, digit count, decimal exponent, undecided mask).

    Fewer digits only ever fit if more digits fit, so lengths are tried from 17 down, each on the
    values that still fit. Undecided values (a decision within DECISION_MARGIN) are left to str().
    """
    number, fraction, exponent10 = _seventeen_digits(magnitude)
    radius = _half_ulp_scaled(magnitude, SIGNIFICANT - 1 - exponent10)
    undecided = np.frexp(magnitude)[0] == 0.5   # a power of two has a narrower interval below it
    digits, count = number.copy(), np.full(len(magnitude), SIGNIFICANT)
    active = np.flatnonzero(~undecided)
    for length in range(SIGNIFICANT, 0, -1):
        unit = _POW10_INT[SIGNIFICANT - length]
        quotient, remainder = np.divmod(number[active], unit)
        below = remainder + fraction[active]             # distance to the candidate rounded down
        above = (unit - remainder) - fraction[active]    # and rounded up
        distance = np.minimum(below, above)
        close = (np.abs(distance - radius[active]) <= DECISION_MARGIN) | (np.abs(above - below) <= DECISION_MARGIN)
        fits = (distance < radius[active]) & ~close
        undecided[active[close]] = True
        active = active[fits]
        digits[active] = quotient[fits] + (above[fits] < below[fits])
        count[active] = length
        if not len(active):
            break
    rolled = digits == _POW10_INT[count]   # 9.999.. rounded up to 10: one digit of the next decade
    digits[rolled], count[rolled] = 1, 1
    exponent10[rolled] += 1
    return digits, count, exponent10, undecided


def _digit_chars(digits, count):
    """(n, 17) ASCII digits, left-aligned: '0' after each value's last significant digit."""
    aligned = digits * _POW10_INT[SIGNIFICANT - count]
    head, tail = np.divmod(aligned, _POW10_INT[16])
    chars = np.empty((len(digits), SIGNIFICANT), np.uint8)
    chars[:, 0] = head + ord("0")
    for stop in (17, 13, 9, 5):
        tail, group = np.divmod(tail, _POW10_INT[4])
        chars[:, stop - 4:stop] = _FOUR_DIGITS[group]
    return chars


@functools.lru_cache(maxsize=None)
def _repr_layout(negative, count, exponent10):
    """Where str(float) puts what, for one class of values: an int is a digit's index, bytes a literal.

    Positional for decimal exponents -4..15 ("0.00123", "12.5", "3.0"), else "1.25e-05" style.
    """
    sign = [b"-"] if negative else []
    if 0 <= exponent10 < 16:
        whole = exponent10 + 1
        return sign + list(range(whole)) + [b"."] + list(range(whole, max(count, whole + 1)))
    if -4 <= exponent10 < 0:
        return sign + [b"0", b"."] + [b"0"] * (-exponent10 - 1) + list(range(count))
    mantissa = [0] + ([b"."] + list(range(1, count)) if count > 1 else [])
    return sign + mantissa + [b"e", b"-" if exponent10 < 0 else b"+"] + [bytes([c]) for c in b"%02d" % abs(exponent10)]


def _fill_layout(canvas, rows, chars, layout, separator):
    """Write one layout (and the separator after it) into the canvas rows of its values."""
    token = np.empty((len(chars), len(layout) + 1), np.uint8)
    digit_slots = [slot for slot, part in enumerate(layout) if isinstance(part, int)]
    token[:, digit_slots] = chars[:, [layout[slot] for slot in digit_slots]]
    for slot, part in enumerate(layout):
        if not isinstance(part, int):
            token[:, slot] = part[0]
    token[:, -1] = separator
    canvas[rows, :token.shape[1]] = token


def _fill_with_str(canvas, rows, values, separators):
    for row, value, separator in zip(rows.tolist(), values[rows].tolist(), separators[rows].tolist()):
        token = str(value).encode() + bytes([separator])
        canvas[row, :len(token)] = np.frombuffer(token, np.uint8)


def _value_tokens(values, separators, canvas):
    """Each value's str(float(v)) and its separator into its canvas row (zero-padded)."""
    nonzero = np.flatnonzero(values != 0)
    digits, count, exponent10, undecided = _shortest_digits(np.abs(values[nonzero]))
    _fill_with_str(canvas, np.concatenate([np.flatnonzero(values == 0), nonzero[undecided]]), values, separators)
    decided = ~undecided
    rows, digits, count, exponent10 = nonzero[decided], digits[decided], count[decided], exponent10[decided]
    chars = _digit_chars(digits, count)
    negative = np.signbit(values[rows])
    # One layout per (sign, digit count, exponent, separator): group the values by that key.
    key = (((negative * 32 + count) * 256 + exponent10 + 128) * 256) + separators[rows]
    order = np.argsort(key, kind="stable")
    for group in np.split(order, np.flatnonzero(np.diff(key[order])) + 1):
        if len(group):
            first = group[0]
            layout = _repr_layout(bool(negative[first]), int(count[first]), int(exponent10[first]))
            _fill_layout(canvas, rows[group], chars[group], layout, separators[rows[first]])


def format_legacy_lines(ids, feats):
    """``pid\tv1,...,vD\n`` lines as bytes, every value spelled str(float(v)) as the original wrote it."""
    feats = np.asarray(feats, dtype=np.float32)
    if not np.isfinite(feats).all():
        raise ValueError("features contain NaN or infinity; refusing to write them")
    n_rows, dim = feats.shape
    # One token slot per value plus one in front of every row for its pid.
    canvas = np.zeros((n_rows, dim + 1, TOKEN_BYTES), np.uint8)
    for row, pid in enumerate(np.asarray(ids, dtype=np.int64).tolist()):
        token = b"%d\t" % pid
        canvas[row, 0, :len(token)] = np.frombuffer(token, np.uint8)
    separators = np.full((n_rows, dim), ord(","), np.uint8)
    separators[:, -1] = ord("\n")
    value_canvas = canvas[:, 1:].reshape(-1, TOKEN_BYTES)
    _value_tokens(feats.astype(np.float64).ravel(), separators.ravel(), value_canvas)
    canvas[:, 1:] = value_canvas.reshape(n_rows, dim, TOKEN_BYTES)
    return canvas[canvas != 0].tobytes()   # no token contains a zero byte: dropping them joins the tokens


def write_legacy_features(path, ids, feats, rows_per_block=1024):
    """Write ``pid \\t v1,...,vD`` lines exactly as the original did (``str(float(v))`` per value).

    Every value is a JSON number and reads back as the same float32.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) != len(feats):
        raise ValueError(f"{len(ids)} ids but {len(feats)} feature rows")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        for start in range(0, len(ids), rows_per_block):
            stop = start + rows_per_block
            f.write(format_legacy_lines(ids[start:stop], np.asarray(feats[start:stop], dtype=np.float32)))
    os.replace(tmp, path)


# --------------------------------------------------------------------- legacy text: reading

_POW10 = np.array([10.0 ** e for e in range(-60, 61)])   # index e + 60; float32 needs -45..38
_ASCII_ZERO = np.uint64(0x3030303030303030)


def _parse_eight_digits(words):
    """uint64 words holding 8 ASCII digits (first digit in the low byte) -> their value.

    The SWAR trick: combine digit pairs, then pairs of pairs, in three multiplies.
    """
    v = words - _ASCII_ZERO
    v = (v * np.uint64(10) + (v >> np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
    v = (v * np.uint64(100) + (v >> np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
    return (v * np.uint64(10000) + (v >> np.uint64(32))) & np.uint64(0xFFFFFFFF)


def _all_digits(words):
    """True when every byte of every uint64 word is an ASCII digit."""
    high_nibbles_ok = (words & np.uint64(0xF0F0F0F0F0F0F0F0)) == _ASCII_ZERO
    below_ten = ((words + np.uint64(0x0606060606060606)) & np.uint64(0xF0F0F0F0F0F0F0F0)) == _ASCII_ZERO
    return bool(np.all(high_nibbles_ok & below_ten))


def _parse_fixed_tokens(block, offset, n_rows, row_stride, dim, out):
    """Parse fixed-width tokens of n_rows lines starting at byte offset into out (n_rows, dim).

    Returns False (leaving out unspecified) when a token is not in the fixed-width layout.
    """
    def column(dtype, byte):   # one field of every token, as a strided view into the block
        return np.ndarray((n_rows, dim), dtype=dtype, buffer=block,
                          offset=offset + byte, strides=(row_stride, TOKEN_WIDTH))
    layout = column(np.uint8, 2) == ord(".")
    layout &= column(np.uint8, 11) == ord("e")
    separators = column(np.uint8, 15)
    if not (layout.all() and (separators[:, :-1] == ord(",")).all() and (separators[:, -1] == ord("\n")).all()):
        return False
    low_digits = column("<u8", 3)
    lead = column(np.uint8, 1) - np.uint8(ord("0"))
    exp_tens = column(np.uint8, 13) - np.uint8(ord("0"))
    exp_ones = column(np.uint8, 14) - np.uint8(ord("0"))
    sign = column(np.uint8, 0).astype(np.int8)
    exp_sign = column(np.uint8, 12).astype(np.int8)
    signs_ok = (np.abs(sign - 44) == 1).all() and (np.abs(exp_sign - 44) == 1).all()
    if not (signs_ok and _all_digits(low_digits) and (lead < 10).all()
            and (exp_tens < 10).all() and (exp_ones < 10).all()):
        return False
    mantissa = _parse_eight_digits(low_digits).astype(np.float64)
    mantissa += lead * 1e8
    # '+' is 43 and '-' is 45, so 44 - byte is the sign as +1 / -1.
    exponent = (44 - exp_sign) * (exp_tens * 10 + exp_ones).astype(np.int16) - 8
    if np.abs(exponent).max() > 60:
        return False
    mantissa *= _POW10[exponent + 60]
    mantissa *= 44 - sign
    out[...] = mantissa
    return True


def _line_error(path, lineno, reason, line):
    text = line[:120].decode("utf-8", "replace")
    return FeatureFileError(f"{path}:{lineno}: {reason}: {text!r}")


def _parse_general_lines(path, lines, first_lineno, dim, ids_out, feats_out):
    """Parse lines of any float spelling; on bad input find and name the offending line."""
    text = b",".join(lines).replace(b"\t", b",")
    try:
        values = np.fromstring(text, dtype=np.float64, sep=",")
    except ValueError:
        values = None
    tabs_ok = sum(line.count(b"\t") for line in lines) == len(lines)
    if values is not None and tabs_ok and values.size == len(lines) * (dim + 1):
        values = values.reshape(len(lines), dim + 1)
        ids_out[:] = values[:, 0]
        if np.array_equal(ids_out, values[:, 0]):   # pids must be integers
            feats_out[:] = values[:, 1:]
            return
    for i, line in enumerate(lines):
        _check_general_line(path, first_lineno + i, line, dim)
    raise FeatureFileError(f"{path}:{first_lineno}-{first_lineno + len(lines) - 1}: cannot parse feature lines")


def _check_general_line(path, lineno, line, dim):
    pid_text, tab, values_text = line.partition(b"\t")
    if not tab:
        raise _line_error(path, lineno, "expected 'pid<TAB>f1,...,fD'", line)
    if not pid_text.strip().isdigit():
        raise _line_error(path, lineno, "pid is not a non-negative integer", line)
    fields = values_text.split(b",")
    if len(fields) != dim:
        raise _line_error(path, lineno, f"expected {dim} values, found {len(fields)}", line)
    for field in fields:
        try:
            float(field)
        except ValueError:
            raise _line_error(path, lineno, f"value {field[:30].decode('utf-8', 'replace')!r} is not a number",
                              line) from None


class _LegacyReader:
    """Reads a legacy text feature file block by block into preallocated arrays."""

    def __init__(self, path):
        self.path = path
        self.size = os.path.getsize(path)
        with open(path, "rb") as f:
            first_line = f.readline(1 << 24)
        if not first_line.strip():
            raise FeatureFileError(f"{path}: empty feature file (expected 'pid<TAB>f1,...,fD' lines)")
        if not first_line.endswith(b"\n"):
            raise _line_error(path, 1, "line is truncated (no newline at the end of the file)", first_line)
        _, _, values_text = first_line.partition(b"\t")
        self.dim = values_text.count(b",") + 1
        # Every line holds at least a 1-digit pid, a tab and dim 2-byte values.
        capacity = self.size // (2 * self.dim + 2) + 1
        # np.empty pages that are never written cost no resident memory.
        self.ids = np.empty(capacity, np.int64)
        self.feats = np.empty((capacity, self.dim), np.float32)
        self.count = 0
        self.lineno = 0

    def read(self, progress=None):
        """Parse blocks on PARSE_THREADS threads (numpy releases the GIL); each block owns its rows."""
        leftover = b""
        with open(self.path, "rb") as f, ThreadPoolExecutor(PARSE_THREADS) as pool:
            jobs = collections.deque()
            for chunk in iter(lambda: f.read(READ_BLOCK_BYTES), b""):
                block = leftover + chunk
                cut = block.rfind(b"\n") + 1
                leftover = block[cut:]
                if cut:
                    n_lines = block.count(b"\n", 0, cut)
                    if self.count + n_lines > len(self.ids):   # only a malformed file can get here
                        raise FeatureFileError(f"{self.path}:{self.lineno + 1}: more lines than the file size allows")
                    jobs.append(pool.submit(self._parse_block, memoryview(block)[:cut], self.count,
                                            self.lineno + 1, n_lines))
                    self.count += n_lines
                    self.lineno += n_lines
                while len(jobs) > PARSE_THREADS:   # bounds the blocks held in memory
                    jobs.popleft().result()
                if progress is not None:
                    progress.update(len(chunk))
            for job in jobs:
                job.result()
        if leftover.strip():
            raise _line_error(self.path, self.lineno + 1, "line is truncated (no newline at the end of the file)",
                              leftover)
        if self.count == 0:
            raise FeatureFileError(f"{self.path}: empty feature file (no feature lines)")
        return FeatureSet(ids=self.ids[:self.count], feats=self.feats[:self.count], source=self.path)

    def _parse_block(self, block, first_row, first_lineno, n_lines):
        rows = slice(first_row, first_row + n_lines)
        first_end = bytes(block[:TOKEN_WIDTH * self.dim + 64]).find(b"\n") + 1
        if first_end and first_end * n_lines == len(block) and self._parse_uniform_block(block, rows, first_end):
            return
        lines = bytes(block).split(b"\n")[:-1]
        _parse_general_lines(self.path, lines, first_lineno, self.dim, self.ids[rows], self.feats[rows])

    def _parse_uniform_block(self, block, rows, line_len):
        """Lines of equal length (same pid width, fixed-width tokens): parse without a Python loop."""
        n_rows = rows.stop - rows.start
        pid_width = line_len - 1 - TOKEN_WIDTH * self.dim
        if not 1 <= pid_width <= 18:
            return False
        lines = np.frombuffer(block, np.uint8).reshape(n_rows, line_len)
        if not (lines[:, pid_width] == ord("\t")).all():
            return False
        pid_digits = lines[:, :pid_width] - np.uint8(ord("0"))
        if not (pid_digits < 10).all():
            return False
        feats = self.feats[rows]
        for lo in range(0, n_rows, PARSE_ROWS):   # row groups keep the float64 temporaries in cache
            group = min(PARSE_ROWS, n_rows - lo)
            if not _parse_fixed_tokens(block, lo * line_len + pid_width + 1, group, line_len, self.dim,
                                       feats[lo:lo + group]):
                return False
        self.ids[rows] = pid_digits.astype(np.int64) @ (10 ** np.arange(pid_width - 1, -1, -1, dtype=np.int64))
        return True


def read_legacy_features(path, show_progress=False):
    """Parse a ``pid \\t f1,...,fD`` text file into a FeatureSet (float32)."""
    reader = _LegacyReader(path)
    progress = None
    if show_progress:
        from tqdm import tqdm
        progress = tqdm(total=reader.size, unit="B", unit_scale=True, desc=f"read {os.path.basename(path)}")
    try:
        features = reader.read(progress)
    finally:
        if progress is not None:
            progress.close()
    _check_unique_ids(features.ids, path)
    return features
