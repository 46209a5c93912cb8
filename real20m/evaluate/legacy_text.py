"""The legacy text feature format: ``pid \\t f1,f2,...,fD``, one item a line, as the original
release wrote and read them; kept as an export/import format.

Writing: each value as the original did, ``str(float(v))``: the shortest decimal that reads back
as the same float32, and a JSON number, so the original's scripts (``json.loads('[' + values + ']')``)
read our files. The digits are found for all values at once, with vectorised numpy.

Reading: any decimal spelling (no nan or inf), each value as float32(float(text)). The original's
spelling of unit-norm features and the fixed-width ``%+.8e`` tokens of earlier versions of this
package are parsed a block at a time with vectorised byte operations; other spellings line by line.
The original's files can hold a pid more than once (its DistributedSampler pads the last batch
with repeated items): identical repeats are dropped with one warning, differing ones refused.
"""
import collections
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from real20m.evaluate.feature_set import FeatureFileError, FeatureSet
from real20m.utils.atomic import atomic_open

READ_BLOCK_BYTES = 1 << 20  # long numpy calls, few GIL hand-offs between parse threads; bounded temporaries
PARSE_THREADS = 2


# --------------------------------------------------------------------- legacy text: writing

def _longdouble_nearest(num, den):
    """The 64-bit-mantissa long double nearest num/den (> 0), assembled from exact 32-bit halves."""
    shift = num.bit_length() - den.bit_length() - 64
    while True:
        top, bottom = (num, den << shift) if shift >= 0 else (num << -shift, den)
        mantissa, remainder = divmod(top, bottom)
        if mantissa < 1 << 63:
            shift -= 1
        elif mantissa >= 1 << 64:
            shift += 1
        else:
            break
    if 2 * remainder > bottom or (2 * remainder == bottom and mantissa & 1):
        mantissa += 1
    halves = np.longdouble(mantissa >> 32) * np.longdouble(2.0 ** 32) + np.longdouble(mantissa & 0xFFFFFFFF)
    return np.ldexp(halves, shift)


# Shortest-repr digits, vectorised. A float32 value x, read as the double d = x, prints as the
# shortest decimal inside d's rounding interval [d - u/2, d + u/2] (u: d's ulp; both ends read back
# as d, its mantissa being even), the one nearest d among those. Scaled by 10^(16 - E), E the decimal
# exponent of d, d becomes s in [1e16, 1e17) and the interval (s - h, s + h) with h in [0.55, 11.1].
# s is computed in x87 long double (64-bit mantissa): |error| <= 1e17 * 2^-63 < 0.011 (both 10^p and
# the product correctly rounded). A value whose answer could change within that error (a bound or a
# rounding tie closer than _AMBIGUOUS to a deciding integer), a power of two (asymmetric interval),
# zero, or one whose positional spelling has a dot past the first digit is spelled by Python instead.
_LD_EXACT = np.finfo(np.longdouble).nmant >= 63
_POW10_OFFSET = 30
_LD_POW10 = np.array([_longdouble_nearest(10 ** p, 1) if p >= 0 else _longdouble_nearest(1, 10 ** -p)
                      for p in range(-_POW10_OFFSET, 70)], dtype=np.longdouble)
_F64_POW10 = np.array([float(f"1e{p}") for p in range(-_POW10_OFFSET, 70)])
_I64_POW10 = 10 ** np.arange(18, dtype=np.int64)
_AMBIGUOUS = 0.02
_EXP_OFFSET = 50          # exponent tables cover E in [-50, 49]; float32 needs [-45, 38]
_N_DIGITS = 18            # index of a pattern: (negative, E, number of digits 1..17)
_FALLBACK = 2 * 100 * _N_DIGITS   # patterns _FALLBACK + L: a Python-spelled value of L bytes
# One value in 32 bytes: 0 sign | 1-5 "0.000" | 6 first digit | 7 "." | 8-23 digits 2-17 |
# 24-27 "e-05" | 28 separator | 29-31 unused. A pattern's mask keeps the bytes of its spelling.
_SLOT = 32
_SEP_COL = 28


def _digit_tables():
    keep = np.zeros((_FALLBACK + _SEP_COL + 1, _SLOT), np.uint8)
    keep[:, _SEP_COL] = 0xFF
    for negative in (0, 1):
        for exponent in range(-_EXP_OFFSET, 100 - _EXP_OFFSET):
            for digits in range(1, 18):
                row = keep[(negative * 100 + exponent + _EXP_OFFSET) * _N_DIGITS + digits]
                row[0] = 0xFF * negative
                if -4 <= exponent <= -1:                 # 0.000ddd
                    row[1:2 - exponent] = 0xFF
                    row[6] = 0xFF
                    row[8:8 + digits - 1] = 0xFF
                elif exponent == 0:                     # d.ddd (d.0: the second digit is a 0)
                    row[6:8] = 0xFF
                    row[8:8 + max(digits - 1, 1)] = 0xFF
                elif exponent < -4 or exponent >= 16:   # d.ddde-05, de-05
                    row[6] = 0xFF
                    row[7:8 + digits - 1] = 0xFF if digits > 1 else 0
                    row[24:28] = 0xFF
                # 1 <= exponent <= 15 stays all-zero: such values are never given these patterns
    for length in range(1, _SEP_COL + 1):
        keep[_FALLBACK + length, :length] = 0xFF
    exponents = np.zeros(100, np.uint32)
    for exponent in range(-_EXP_OFFSET, 100 - _EXP_OFFSET):
        exponents[exponent + _EXP_OFFSET] = np.frombuffer(b"e%+03d" % exponent, np.uint32)[0] \
            if abs(exponent) < 100 else 0
    return keep.view(np.uint32), exponents


_KEEP_WORDS, _EXP_WORDS = _digit_tables()
_FOUR_DIGITS = np.frombuffer("".join("%04d" % i for i in range(10000)).encode(), np.uint32)


def _shortest_digits(values):
    """float32 (n,) -> (Q, digits, E, ok): where ok, str(float(v)) has the first ``digits`` of the
    17-digit integer Q as its digits and E as its decimal exponent."""
    magnitude = np.abs(values.astype(np.float64))
    ok = (magnitude != 0) & ((magnitude.view(np.uint64) & np.uint64((1 << 52) - 1)) != 0)
    magnitude[~ok] = 1.5
    exponent = np.floor(np.log10(magnitude)).astype(np.int64)
    wide = magnitude.astype(np.longdouble)
    scaled = wide * _LD_POW10[16 - exponent + _POW10_OFFSET]
    for _ in range(2):   # log10 can be one off next to a power of ten
        high, low = scaled >= 1e17, scaled < 1e16
        wrong = np.flatnonzero(high | low)
        if not len(wrong):
            break
        exponent[wrong] += high[wrong].astype(np.int64) - low[wrong]
        scaled[wrong] = wide[wrong] * _LD_POW10[16 - exponent[wrong] + _POW10_OFFSET]
    ok &= (exponent <= 0) | (exponent >= 16)   # 1 <= E <= 15: a dot past the first digit
    ok &= (scaled >= 1e16 + 12) & (scaled <= 1e17 - 12)
    scaled[~ok] = 5e16
    whole = scaled.astype(np.int64)
    fraction = (scaled - whole).astype(np.float64)            # exact: s has 7 fraction bits at most
    half_gap = np.ldexp(_F64_POW10[16 - exponent + _POW10_OFFSET], np.frexp(magnitude)[1] - 54)
    bounds = []
    for edge in (fraction - half_gap, fraction + half_gap):
        floor = np.floor(edge)
        integer = whole + floor.astype(np.int64)
        rest = edge - floor
        # an interval end this close to a multiple of ten might fall on either side of it
        ok &= ~(((rest < _AMBIGUOUS) & (integer % 10 == 0)) | ((rest > 1 - _AMBIGUOUS) & (integer % 10 == 9)))
        bounds.append(integer)
    low, high = bounds   # integers in [s - h, s + h] are those in (low, high]
    dropped = np.zeros(len(values), np.int64)   # trailing digits dropped: most k with a multiple of 10^k inside
    live = np.arange(len(values))
    for k in range(1, 17):
        power = _I64_POW10[k]
        live = live[(high[live] // power) != (low[live] // power)]
        if not len(live):
            break
        dropped[live] = k
    power = _I64_POW10[dropped]
    remainder = whole % power
    past_half = remainder + fraction - power * 0.5
    ok &= np.abs(past_half) >= _AMBIGUOUS
    nearest = whole - remainder + power * (past_half > 0)
    ok &= (nearest >= 10 ** 16) & (nearest < 10 ** 17)
    return nearest, 17 - dropped, exponent, ok


def _format_value_rows(feats):
    """float32 (n, D) -> the ``v1,...,vD\\n`` text of each row, joined, and each row's byte length."""
    n_rows, dim = feats.shape
    values = feats.reshape(-1)
    nearest, n_digits, exponent, ok = _shortest_digits(values) if _LD_EXACT else (None, None, None, None)
    slots = np.zeros((len(values), _SLOT), np.uint8)
    slots[:, :8] = np.frombuffer(b"-0.0006.", np.uint8)
    slots[:, _SEP_COL] = ord(",")
    slots.reshape(n_rows, dim, _SLOT)[:, -1, _SEP_COL] = ord("\n")
    if ok is None:
        bad = np.arange(len(values))
        patterns = np.zeros(len(values), np.int64)
    else:
        words = slots.view(np.uint32)
        rest, low4 = np.divmod(np.where(ok, nearest, 10 ** 16), 10000)
        words[:, 5] = _FOUR_DIGITS[low4]
        for col in (4, 3, 2):
            rest, four = np.divmod(rest, 10000)
            words[:, col] = _FOUR_DIGITS[four]
        slots[:, 6] = rest + ord("0")
        clipped = np.clip(exponent, -_EXP_OFFSET, 99 - _EXP_OFFSET) + _EXP_OFFSET
        words[:, 6] = _EXP_WORDS[clipped]
        patterns = (np.signbit(values) * 100 + clipped) * _N_DIGITS + n_digits
        bad = np.flatnonzero(~ok)
    if len(bad):
        texts = [str(value).encode("ascii") for value in values[bad].astype(np.float64).tolist()]
        patterns[bad] = [_FALLBACK + len(text) for text in texts]
        slots[bad, :_SEP_COL] = np.frombuffer(b"".join(text.ljust(_SEP_COL, b"\0") for text in texts),
                                              np.uint8).reshape(len(bad), _SEP_COL)
    masks = _KEEP_WORDS[patterns]
    kept = slots.view(np.uint32) & masks
    row_bytes = np.count_nonzero(masks.view(np.uint8).reshape(n_rows, dim * _SLOT), axis=1)
    return kept.tobytes().translate(None, b"\0"), row_bytes


FORMAT_ROWS = 64   # rows formatted per vectorised pass (~2 MB of temporaries at D=512)


def format_legacy_lines(ids, feats):
    """``pid\\tv1,...,vD\\n`` lines as bytes, each value spelled ``str(float(v))`` as the original wrote it.

    That is the shortest decimal that reads back as the same double, so as the same float32, and it
    is always a JSON number. The digits are found for all values at once (``_shortest_digits``);
    the few whose digits the vectorised search cannot settle are spelled by Python's own float repr.
    """
    feats = np.asarray(feats, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    if not np.isfinite(feats).all():
        raise ValueError("features contain NaN or infinity; refusing to write them")
    if feats.ndim != 2 or len(feats) != len(ids):
        raise ValueError(f"feats must be (N, D) with N = len(ids) = {len(ids)}, got {feats.shape}")
    pieces = []
    for start in range(0, len(ids), FORMAT_ROWS):
        text, row_bytes = _format_value_rows(feats[start:start + FORMAT_ROWS])
        ends = np.cumsum(row_bytes).tolist()
        view = memoryview(text)
        for pid, lo, hi in zip(ids[start:start + FORMAT_ROWS].tolist(), [0] + ends[:-1], ends):
            pieces.append(b"%d\t" % pid)
            pieces.append(view[lo:hi])
    return b"".join(pieces)


def write_legacy_features(path, ids, feats, rows_per_block=1024):
    """Write ``pid \\t v1,...,vD`` lines exactly as the original did; values read back bitwise.

    Blocks are formatted on PARSE_THREADS threads (numpy releases the GIL) and written in order.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) != len(feats):
        raise ValueError(f"{len(ids)} ids but {len(feats)} feature rows")
    with atomic_open(path, "wb", temp=path + ".tmp") as f, ThreadPoolExecutor(PARSE_THREADS) as pool:
        jobs = collections.deque()
        for start in range(0, len(ids), rows_per_block):
            stop = start + rows_per_block
            jobs.append(pool.submit(format_legacy_lines, ids[start:stop], feats[start:stop]))
            while len(jobs) > PARSE_THREADS:   # bounds the formatted blocks held in memory
                f.write(jobs.popleft().result())
        for job in jobs:
            f.write(job.result())


# --------------------------------------------------------------------- legacy text: reading

# A block of whole lines sits in a bytearray at offset _LEAD with _TRAIL bytes after it, so the
# fixed-size window read around every value (7 bytes before its dot, 16 after it) stays inside the
# buffer; whatever it reads outside the value is masked off or ignored.
_LEAD = 8
_TRAIL = 24
_FAST_PID_DIGITS = 18   # longer pids (up to int64) go to the exact line parser
_POW10_SPAN = 120
_POW10_TABLE = np.array([float(f"1e{p}") for p in range(-_POW10_SPAN, _POW10_SPAN)])
# A parsed float64 this close (relative) to its float32 rounds to it from the exact decimal too: it
# is off by a few 2^-53 at most, and a float32 rounding boundary lies at least 2^-26 away.
_SURE = 2.0 ** -28
_DECIMAL_CHARS = b"0123456789+-.eE"


def _combine_digit_words(words):
    """In place: uint64 words of 8 digits (low nibbles, first digit in the low byte) -> their value.

    simdjson's SWAR parse: digit pairs, then quads, then all eight, one multiply and shift each.
    """
    words *= np.uint64(2561)
    words >>= np.uint64(8)
    words &= np.uint64(0x00FF00FF00FF00FF)
    words *= np.uint64(6553601)
    words >>= np.uint64(16)
    words &= np.uint64(0x0000FFFF0000FFFF)
    words *= np.uint64(42949672960001)
    words >>= np.uint64(32)


def _windows(data, starts, dtype):
    """The ``dtype``-sized windows of uint8 ``data`` that start at byte offsets ``starts`` (one gather)."""
    size = np.dtype(dtype).itemsize
    return np.ndarray((len(data) - size + 1,), dtype, buffer=data, strides=(1,))[starts]


def _read_pids(buffer, line_ends, tabs, ids_out):
    """The pid of every line (digits from the line start to its tab); False if one is not that."""
    starts = [_LEAD] + (line_ends[:-1] + 1).tolist()
    for row, (start, tab) in enumerate(zip(starts, tabs.tolist())):
        pid = buffer[start:tab]
        if not (0 < len(pid) <= _FAST_PID_DIGITS and pid.isdigit()):
            return False
        ids_out[row] = int(pid)
    return True


class _BlockParser:
    """Parses a block of legacy lines without a Python loop per value, when every value is spelled
    ``[+-]D.DDDD[e+DD]`` with one integer digit: the original's spelling of unit-norm features, and
    the fixed-width tokens of earlier versions. Anything else makes ``parse`` return False.

    A value is found by its dot (one ``flatnonzero`` per block). A 24-byte window around the dot
    holds its sign, integer digit and first 16 fraction digits; the window of the value after it
    holds its exponent. Digits are combined 8 at a time in uint64 words. Instead of testing every
    byte of every value, the block's digit count must equal what the located values, separators and
    pids leave: every other byte is then a digit. One parser per thread: its work arrays are reused
    from block to block, as fresh temporaries of this size would fault in new pages every time.
    """

    def __init__(self):
        self.words = np.empty((10, 0), np.uint64)
        self.floats = np.empty((3, 0))
        self.text_work = np.empty(0, np.uint8)
        self.text_mask = np.empty(0, bool)

    def parse(self, buffer, end, line_ends, dim, ids_out, feats_out):
        """Fill ids_out, feats_out from the lines of ``buffer[_LEAD:end]`` (``line_ends``: their newlines).

        Returns False, leaving the outputs unspecified, when the block needs the exact line parser.
        """
        self.data = np.frombuffer(buffer, np.uint8)
        self.text = self.data[_LEAD:end]
        if len(self.text) > len(self.text_work):
            self.text_work = np.empty(len(self.text), np.uint8)
            self.text_mask = np.empty(len(self.text), bool)
        dots = np.flatnonzero(np.equal(self.text, ord("."), out=self.text_mask[:len(self.text)]))
        if len(dots) != len(line_ends) * dim:
            return False
        dots += _LEAD
        self._gather(dots)
        self._locate(line_ends, dim)
        if not self._exponents(line_ends, dim):
            return False
        self._magnitudes()
        return (self._well_formed(line_ends, dim) and _read_pids(buffer, line_ends, self.left[::dim], ids_out)
                and self._round_to_float32(buffer, feats_out.reshape(-1)))

    def _gather(self, dots):
        n_values = len(dots)
        if n_values > self.words.shape[1]:
            self.words = np.empty((10, n_values), np.uint64)
            self.floats = np.empty((3, n_values))
        words = self.words[:, :n_values]
        self.lead, self.before, self.shift, self.work, self.keep = words[:5]
        self.left, self.right, self.n_frac = (row.view(np.int64) for row in words[5:8])
        self.digits = words[8:]
        self.mantissa, self.value, self.rounded = self.floats[:, :n_values]
        self.dots = dots
        self.window = _windows(self.data, dots - 7, "V24").view(np.uint64).reshape(n_values, 3)
        np.copyto(self.lead, self.window[:, 0])                      # bytes dot-7 .. dot

    def _locate(self, line_ends, dim):
        """Each value's bounds: the separator before it (after its sign, if any) and the one after it."""
        np.right_shift(self.lead, np.uint64(40), out=self.before)    # the byte before the integer digit
        self.before &= np.uint64(0xFF)
        self.signed = (self.before == ord("-")) | (self.before == ord("+"))
        # lead >> shift starts 4 bytes before this value's separator: the end of the value ahead of
        # it, where that one keeps an exponent (read by _exponents).
        np.copyto(self.shift, self.signed)
        self.shift <<= np.uint64(3)
        np.subtract(np.uint64(8), self.shift, out=self.shift)
        np.subtract(self.dots, 2, out=self.left)
        self.left -= self.signed
        right = self.right.reshape(-1, dim)
        right[:, :-1] = self.left.reshape(-1, dim)[:, 1:]           # a value ends where the next begins
        right[:, -1] = line_ends

    def _exponents(self, line_ends, dim):
        """Each value's number of fraction digits and decimal exponent; False for a malformed exponent.

        The 4 bytes before a value's end (``e+DD`` if it has an exponent) lie in the next value's
        window; the last value of a line reads them before its newline.
        """
        ending = self.work
        np.right_shift(self.lead, self.shift, out=ending)
        ending = ending.reshape(-1, dim)
        ending[:, :-1] = ending[:, 1:]
        ending[:, -1] = _windows(self.data, line_ends - 4, "<u4")
        ending = ending.reshape(-1)
        self.exp_rows = np.flatnonzero((ending & np.uint64(0xDF)) == ord("E"))   # 'e' and 'E' alike
        np.subtract(self.right, self.dots, out=self.n_frac)
        self.n_frac -= 1
        self.n_frac[self.exp_rows] -= 4
        exponent = ending[self.exp_rows].astype(np.int64)            # bytes 'e', sign, tens, ones
        sign, tens, ones = ((exponent >> shift) & 0xFF for shift in (8, 16, 24))
        self.powers = (tens * 10 + ones - 11 * ord("0")) * (ord(",") - sign)
        return bool((np.abs(sign - ord(",")) == 1).all())           # '+' is 43 and '-' is 45

    def _magnitudes(self):
        """|value| in float64, from the integer digit and the first 16 fraction digits."""
        np.left_shift(self.n_frac.view(np.uint64), np.uint64(3), out=self.work)   # fraction bits
        np.left_shift(np.uint64(1), self.work, out=self.keep)       # numpy shifts 64 or more to 0
        self.keep -= np.uint64(1)
        self._keep_digits(0)
        np.minimum(self.work, np.uint64(128), out=self.work)
        np.subtract(np.uint64(128), self.work, out=self.work)
        np.right_shift(np.uint64(0xFFFFFFFFFFFFFFFF), self.work, out=self.keep)
        self._keep_digits(1)
        _combine_digit_words(self.digits)
        np.right_shift(self.lead, np.uint64(48), out=self.work)     # the integer digit
        self.work &= np.uint64(0xF)
        self.work *= np.uint64(10 ** 8)
        self.work += self.digits[0]
        np.copyto(self.mantissa, self.work, casting="unsafe")       # < 10^9: exact
        self.mantissa *= 1e8
        self.mantissa += self.digits[1]
        np.multiply(self.mantissa, 1e-16, out=self.value)
        self.value[self.exp_rows] *= _POW10_TABLE[np.clip(self.powers, -_POW10_SPAN, _POW10_SPAN - 1) + _POW10_SPAN]

    def _keep_digits(self, word):
        """Fraction word ``word`` (0: digits 1-8, 1: digits 9-16) with the bytes outside ``self.keep``
        zeroed, each digit reduced to its low nibble."""
        self.keep &= np.uint64(0x0F0F0F0F0F0F0F0F)
        np.bitwise_and(self.window[:, 1 + word], self.keep, out=self.digits[word])

    def _well_formed(self, line_ends, dim):
        """Separators where the values say, one value per dot, and digits in every other byte."""
        separator = self.work                                       # the byte at dot - 2 - signed
        np.add(self.shift, np.uint64(32), out=separator)
        np.right_shift(self.lead, separator, out=separator)
        separator &= np.uint64(0xFF)
        n_lines, n_values = len(line_ends), len(self.dots)
        expected_digits = (len(self.text) - n_lines * (dim + 1) - n_values - np.count_nonzero(self.signed)
                           - 2 * len(self.exp_rows))
        digits = self.text_work[:len(self.text)]
        np.subtract(self.text, np.uint8(ord("0")), out=digits)
        return (np.count_nonzero(separator == ord(",")) == n_values - n_lines
                and (separator[::dim] == ord("\t")).all() and self.n_frac.min() > 0
                and (self.dots[dim - 1::dim] < line_ends).all()
                and np.count_nonzero(digits < 10) == expected_digits)

    def _round_to_float32(self, buffer, out):
        """Round into ``out``; values the float64 cannot settle are parsed by Python. False if one overflows."""
        with np.errstate(over="ignore"):
            np.copyto(out, self.value, casting="same_kind")
        np.copyto(self.rounded, out)
        np.subtract(self.value, self.rounded, out=self.value)
        np.abs(self.value, out=self.value)
        np.abs(self.rounded, out=self.rounded)
        self.rounded *= _SURE
        sure = self.value <= self.rounded
        sure &= (self.n_frac <= 16) | (self.mantissa >= 1e12)     # past 16 digits: a change below 1e-12
        bits = out.view(np.uint32)
        bits |= (self.before == ord("-")).astype(np.uint32) << np.uint32(31)
        for i in np.flatnonzero(~sure).tolist():
            out[i] = np.float32(float(buffer[self.left[i] + 1:self.right[i]]))
        return bool(np.isfinite(out).all())


def _line_error(path, lineno, reason, line):
    text = bytes(line[:120]).decode("utf-8", "replace")
    return FeatureFileError(f"{path}:{lineno}: {reason}: {text!r}")


def _parse_line(path, lineno, line, dim):
    """(pid, float32 values) of one line, each value float32(float(text)); a malformed line is named."""
    pid_text, tab, values_text = line.partition(b"\t")
    if not tab:
        raise _line_error(path, lineno, "expected 'pid<TAB>f1,...,fD'", line)
    if not (pid_text.isdigit() and int(pid_text) < 2 ** 63):   # bytes.isdigit: ASCII digits only
        raise _line_error(path, lineno, "pid is not a non-negative 64-bit integer", line)
    fields = values_text.split(b",")
    if len(fields) != dim:
        raise _line_error(path, lineno, f"expected {dim} values, found {len(fields)}", line)
    values = np.array([_decimal(path, lineno, field, line) for field in fields])
    with np.errstate(over="ignore"):
        values = values.astype(np.float32)
    if not np.isfinite(values).all():
        field = fields[int(np.flatnonzero(~np.isfinite(values))[0])]
        raise _line_error(path, lineno, f"value {field[:30].decode()!r} is outside the float32 range", line)
    return int(pid_text), values


def _decimal(path, lineno, field, line):
    """float(field) for a decimal number only: float() also takes nan, inf, spaces and underscores."""
    try:
        if field and not field.translate(None, _DECIMAL_CHARS):
            return float(field)
    except ValueError:
        pass
    raise _line_error(path, lineno, f"value {field[:30].decode('utf-8', 'replace')!r} is not a decimal number",
                      line)


def _parse_lines(path, lines, first_lineno, dim, ids_out, feats_out):
    for row, line in enumerate(lines):
        ids_out[row], feats_out[row] = _parse_line(path, first_lineno + row, line, dim)


def _line_ends(buffer, end):
    """Offsets of the newlines in ``buffer[_LEAD:end]``."""
    ends = []
    newline = buffer.find(b"\n", _LEAD, end)
    while newline >= 0:
        ends.append(newline)
        newline = buffer.find(b"\n", newline + 1, end)
    return np.array(ends, np.int64)


class _LegacyReader:
    """Reads a legacy text feature file block by block into preallocated arrays.

    The main thread reads blocks of whole lines into a few reused buffers; PARSE_THREADS threads parse
    them (numpy releases the GIL), each block into its own rows, with the vectorised ``_BlockParser``
    or, for a block it cannot take, the exact line parser, which also names a malformed line.
    """

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
        self.block_bytes = max(READ_BLOCK_BYTES, 2 * len(first_line))
        # Every line holds at least a 1-digit pid, a tab and dim 2-byte values.
        capacity = self.size // (2 * self.dim + 2) + 1
        # np.empty pages that are never written cost no resident memory.
        self.ids = np.empty(capacity, np.int64)
        self.feats = np.empty((capacity, self.dim), np.float32)
        self.count = 0
        self.parsers = threading.local()

    def read(self, progress=None):
        """Parse every block; at most PARSE_THREADS + 1 buffers of text are held at a time."""
        carry = b""
        with open(self.path, "rb", buffering=0) as f, ThreadPoolExecutor(PARSE_THREADS) as pool:
            jobs = collections.deque()
            spare = [bytearray(_LEAD + self.block_bytes + _TRAIL) for _ in range(PARSE_THREADS + 1)]
            while True:
                buffer = spare.pop() if spare else jobs.popleft().result()
                buffer, end, got = self._fill(f, buffer, carry)
                if progress is not None:
                    progress.update(got)
                cut = buffer.rfind(b"\n", _LEAD, end) + 1
                carry = bytes(buffer[max(cut, _LEAD):end])
                if cut:
                    jobs.append(self._submit(pool, buffer, cut))
                else:
                    spare.append(buffer)
                if not got:
                    break
            for job in jobs:
                job.result()
        if carry.strip():
            raise _line_error(self.path, self.count + 1, "line is truncated (no newline at the end of the file)",
                              carry)
        if self.count == 0:
            raise FeatureFileError(f"{self.path}: empty feature file (no feature lines)")
        return FeatureSet(ids=self.ids[:self.count], feats=self.feats[:self.count], source=self.path)

    def _fill(self, f, buffer, carry):
        """(buffer, end, bytes read): ``carry`` then the next bytes of the file from offset _LEAD.

        A buffer with no newline in it (a line longer than the block) is replaced by one twice as big.
        """
        if len(carry) > len(buffer) // 2:
            buffer = bytearray(2 * len(buffer))
        buffer[_LEAD:_LEAD + len(carry)] = carry
        start = _LEAD + len(carry)
        got = f.readinto(memoryview(buffer)[start:len(buffer) - _TRAIL])
        return buffer, start + got, got

    def _submit(self, pool, buffer, cut):
        line_ends = _line_ends(buffer, cut)   # memchr per line: faster than bytearray.count
        if self.count + len(line_ends) > len(self.ids):   # only a malformed file can get here
            raise FeatureFileError(f"{self.path}:{self.count + 1}: more lines than the file size allows")
        job = pool.submit(self._parse_block, buffer, line_ends, self.count)
        self.count += len(line_ends)
        return job

    def _parse_block(self, buffer, line_ends, first_row):
        """Parse the block's lines into rows first_row..; returns the buffer for reuse."""
        rows = slice(first_row, first_row + len(line_ends))
        end = int(line_ends[-1]) + 1
        parser = getattr(self.parsers, "parser", None) or _BlockParser()
        self.parsers.parser = parser
        if not parser.parse(buffer, end, line_ends, self.dim, self.ids[rows], self.feats[rows]):
            lines = bytes(buffer[_LEAD:end - 1]).split(b"\n")
            _parse_lines(self.path, lines, first_row + 1, self.dim, self.ids[rows], self.feats[rows])
        return buffer


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
    return drop_identical_repeats(features)


def _repeats(ids):
    """(row of each repeated pid, row of its first occurrence), both in file order."""
    order = np.argsort(ids, kind="stable")          # stable: the first occurrence leads its run
    sorted_ids = ids[order]
    repeated = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1]) + 1
    run_starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    first = run_starts[np.searchsorted(run_starts, repeated, side="right") - 1]
    return order[repeated], order[first]


def drop_identical_repeats(features):
    """Keep the first line of a pid repeated with a bitwise identical vector; refuse differing repeats.

    Line numbers are row numbers + 1: the legacy reader accepts no blank or comment lines.
    """
    repeat_rows, first_rows = _repeats(features.ids)
    if not len(repeat_rows):
        return features
    differs = np.any(features.feats[repeat_rows].view(np.uint32) != features.feats[first_rows].view(np.uint32),
                     axis=1)
    if differs.any():
        row, first = int(repeat_rows[differs][0]), int(first_rows[differs][0])
        raise FeatureFileError(
            f"{features.source}:{row + 1}: pid {int(features.ids[row])} also on line {first + 1} with a "
            f"different vector ({int(differs.sum())} repeated pids differ); cannot tell which one to keep")
    keep = np.ones(len(features.ids), bool)
    keep[repeat_rows] = False
    logging.warning("%s: dropped %d repeated lines of pids listed earlier with an identical vector "
                    "(the original's DistributedSampler pads with repeats)", features.source, len(repeat_rows))
    return FeatureSet(ids=features.ids[keep], feats=features.feats[keep], source=features.source,
                      repeated_rows=len(repeat_rows))
