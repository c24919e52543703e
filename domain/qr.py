"""QR codes for labels: the qrcode package encodes, this module places, masks and writes PNG fast.

qrcode's own `make()` tries the eight masks by building eight full matrices in Python lists and scoring
each with a Python loop, then PIL draws the modules one rectangle at a time: about 100-200 codes per
second per core. Here the function patterns and the data-module order of each (version, error level)
are computed once; per code, the codewords (qrcode's segmentation and bit stream, with a table-driven
Reed-Solomon) are placed into all eight masks at once with numpy, scored with the same penalty rules
qrcode uses (so the chosen mask and the matrix are identical to qrcode's, which the tests check), and
written as a 1-bit PNG with zlib directly.
"""

from __future__ import annotations

import struct
import zlib
from functools import lru_cache

import numpy as np
import qrcode
from qrcode import constants, util
from qrcode.base import rs_blocks as _rs_blocks

ECL = {"L": constants.ERROR_CORRECT_L, "M": constants.ERROR_CORRECT_M, "Q": constants.ERROR_CORRECT_Q,
       "H": constants.ERROR_CORRECT_H}

# GF(256) with the QR polynomial 0x11d
_EXP = [0] * 512
_LOG = [0] * 256
_x = 1
for _i in range(255):
    _EXP[_i] = _x
    _LOG[_x] = _i
    _x <<= 1
    if _x & 0x100:
        _x ^= 0x11D
for _i in range(255, 512):
    _EXP[_i] = _EXP[_i - 255]


@lru_cache(maxsize=64)
def _generator(ec: int) -> list[int]:
    g = [1]
    for i in range(ec):
        nxt = [0] * (len(g) + 1)
        for j, c in enumerate(g):
            nxt[j] ^= c
            if c:
                nxt[j + 1] ^= _EXP[_LOG[c] + i]
        g = nxt
    return g  # g[0] == 1


@lru_cache(maxsize=64)
def _feedback_table(ec: int) -> tuple[int, ...]:
    """For each feedback byte f: f * generator (without the leading 1) as one big integer of ec bytes."""
    g = _generator(ec)[1:]
    out = []
    for f in range(256):
        if f == 0:
            out.append(0)
            continue
        lf = _LOG[f]
        v = 0
        for c in g:
            v = (v << 8) | (_EXP[lf + _LOG[c]] if c else 0)
        out.append(v)
    return tuple(out)


def _rs_ecc(data: bytes, ec: int) -> bytes:
    """Reed-Solomon remainder: an LFSR over one big integer (one shift and one XOR per data byte)."""
    table = _feedback_table(ec)
    shift = 8 * (ec - 1)
    mask = (1 << (8 * ec)) - 1
    reg = 0
    for b in data:
        f = b ^ (reg >> shift)
        reg = ((reg << 8) & mask) ^ table[f]
    return reg.to_bytes(ec, "big")


_NUM_BITS = {1: 4, 2: 7, 3: 10}


def _segments(text: str) -> list[tuple[int, int, int, int]]:
    """qrcode's segmentation (numeric / alphanumeric / byte runs), each as (mode, count, bits, value)."""
    out = []
    for d in util.optimal_data_chunks(text, minimum=20):  # qrcode's default optimisation
        data = d.data
        acc, nbits = 0, 0
        if d.mode == util.MODE_NUMBER:
            for i in range(0, len(data), 3):
                chunk = data[i:i + 3]
                acc = (acc << _NUM_BITS[len(chunk)]) | int(chunk)
                nbits += _NUM_BITS[len(chunk)]
        elif d.mode == util.MODE_ALPHA_NUM:
            for i in range(0, len(data), 2):
                chunk = data[i:i + 2]
                if len(chunk) == 2:
                    acc = (acc << 11) | (util.ALPHA_NUM.find(chunk[0:1]) * 45 + util.ALPHA_NUM.find(chunk[1:2]))
                    nbits += 11
                else:
                    acc = (acc << 6) | util.ALPHA_NUM.find(chunk)
                    nbits += 6
        else:
            acc = int.from_bytes(data, "big")
            nbits = 8 * len(data)
        out.append((d.mode, len(data), nbits, acc))
    return out


@lru_cache(maxsize=512)
def _capacity_bits(version: int, ecl: int) -> int:
    return sum(b.data_count * 8 for b in _rs_blocks(version, ecl))


def _fit(segs: list[tuple[int, int, int, int]], ecl: int) -> int:
    """The smallest version the segments fit in (what qrcode's best_fit finds)."""
    for version in range(1, 41):
        bits = sum(4 + util.length_in_bits(mode, version) + nbits for mode, _, nbits, _ in segs)
        if bits <= _capacity_bits(version, ecl):
            return version
    raise ValueError("text too long for a QR code")


def codewords(version: int, ecl: int, segs: list[tuple[int, int, int, int]]) -> bytes:
    """The final codeword sequence (data and ECC, interleaved), as qrcode's create_data computes it."""
    acc, nbits = 0, 0
    for mode, count, bits, value in segs:
        lb = util.length_in_bits(mode, version)
        acc = (((acc << 4 | mode) << lb | count) << bits) | value
        nbits += 4 + lb + bits
    blocks = _rs_blocks(version, ecl)
    bit_limit = _capacity_bits(version, ecl)
    term = min(bit_limit - nbits, 4)
    acc <<= term
    nbits += term
    if nbits % 8:
        acc <<= 8 - nbits % 8
        nbits += 8 - nbits % 8
    raw = acc.to_bytes(nbits // 8, "big") if nbits else b""
    pad = (bit_limit - nbits) // 8
    raw += bytes((util.PAD0, util.PAD1)[i % 2] for i in range(pad))
    dcs, ecs = [], []
    off = 0
    for b in blocks:
        dc = raw[off:off + b.data_count]
        off += b.data_count
        dcs.append(dc)
        ecs.append(_rs_ecc(dc, b.total_count - b.data_count))
    out = bytearray()
    for i in range(max(len(d) for d in dcs)):
        out += bytes(d[i] for d in dcs if i < len(d))
    for i in range(max(len(e) for e in ecs)):
        out += bytes(e[i] for e in ecs if i < len(e))
    return bytes(out)


class _Template:
    """Everything about a (version, error level) that does not depend on the data."""

    def __init__(self, version: int, ecl: int) -> None:
        q = qrcode.QRCode(version=version, error_correction=ecl)
        n = q.modules_count = version * 4 + 17
        self.n = n
        # function patterns with format/version information blank (qrcode's "test" matrix, used for scoring)
        q.modules = [[None] * n for _ in range(n)]
        q.setup_position_probe_pattern(0, 0)
        q.setup_position_probe_pattern(n - 7, 0)
        q.setup_position_probe_pattern(0, n - 7)
        q.setup_position_adjust_pattern()
        q.setup_timing_pattern()
        q.setup_type_info(True, 0)
        if version >= 7:
            q.setup_type_number(True)
        free = np.array([[m is None for m in row] for row in q.modules])
        self.base = np.array([[bool(m) for m in row] for row in q.modules], dtype=np.uint8)
        # data module order: two-column zig-zag from the bottom right, skipping the vertical timing column
        order = []
        row, inc = n - 1, -1
        for col in range(n - 1, 0, -2):
            if col <= 6:
                col -= 1
            while True:
                for c in (col, col - 1):
                    if free[row, c]:
                        order.append((row, c))
                row += inc
                if row < 0 or row >= n:
                    row -= inc
                    inc = -inc
                    break
        self.rows = np.array([r for r, _ in order])
        self.cols = np.array([c for _, c in order])
        masks = []
        for m in range(8):
            f = util.mask_func(m)
            masks.append([bool(f(r, c)) for r, c in order])
        self.masks = np.array(masks, dtype=np.uint8)  # (8, modules)
        # the real format (and version) information per mask, applied to the chosen one
        self.final: list[np.ndarray] = []
        for m in range(8):
            q.modules = [[None] * n for _ in range(n)]
            q.setup_type_info(False, m)
            if version >= 7:
                q.setup_type_number(False)
            self.final.append(np.array([[-1 if v is None else int(v) for v in row] for row in q.modules],
                                       dtype=np.int8))


@lru_cache(maxsize=128)
def _template(version: int, ecl: int) -> _Template:
    return _Template(version, ecl)


_P1 = np.array([1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0], dtype=np.uint8)
_P2 = _P1[::-1].copy()
_P1_CODE = int("".join(map(str, _P1)), 2)
_P2_CODE = int("".join(map(str, _P2)), 2)


def _penalty(m: np.ndarray) -> np.ndarray:
    """The four penalty rules, for a stack of candidate matrices (k, n, n), as qrcode scores them."""
    k, n, _ = m.shape
    total = np.zeros(k, dtype=np.int64)
    for a in (m, m.transpose(0, 2, 1)):
        # rule 1: runs of five or more same-coloured modules score length - 2
        b = np.ones((k, n, n + 1), dtype=bool)
        b[:, :, 1:n] = a[:, :, 1:] != a[:, :, :-1]
        idx = np.flatnonzero(b.reshape(-1))
        runs = np.diff(idx)
        owner = idx[:-1] // (n * (n + 1))
        long = runs >= 5
        total += np.bincount(owner[long], weights=runs[long] - 2, minlength=k).astype(np.int64)
        # rule 3: 1:1:3:1:1 finder-like patterns with four light modules on one side score 40
        code = np.zeros((k, n, n - 10), dtype=np.int16)
        for i in range(11):
            code |= a[:, :, i:i + n - 10].astype(np.int16) << (10 - i)
        hits = (code == _P1_CODE) | (code == _P2_CODE)
        total += 40 * hits.sum(axis=(1, 2))
    # rule 2: 2x2 blocks of one colour score 3
    tl = m[:, :-1, :-1]
    same = (tl == m[:, 1:, :-1]) & (tl == m[:, :-1, 1:]) & (tl == m[:, 1:, 1:])
    total += 3 * same.sum(axis=(1, 2))
    # rule 4: every 5 % the dark share departs from 50 % scores 10
    dark = m.sum(axis=(1, 2))
    for i in range(k):
        percent = float(dark[i]) / (n * n)
        total[i] += int(abs(percent * 100 - 50) / 5) * 10
    return total


def matrix(text: str, ecl: str = "M") -> np.ndarray:
    """The QR matrix (n x n, 1 = dark, no quiet zone) qrcode would make for `text` at this error level."""
    level = ECL[ecl]
    segs = _segments(text)
    version = _fit(segs, level)
    t = _template(version, level)
    cw = np.frombuffer(codewords(version, level, segs), dtype=np.uint8)
    bits = np.zeros(len(t.rows), dtype=np.uint8)
    unpacked = np.unpackbits(cw)
    bits[:len(unpacked)] = unpacked
    cand = np.repeat(t.base[None, :, :], 8, axis=0)
    cand[:, t.rows, t.cols] = bits[None, :] ^ t.masks
    best = int(np.argmin(_penalty(cand)))  # first of equals, as qrcode picks
    out = cand[best]
    fin = t.final[best]
    sel = fin >= 0
    out[sel] = fin[sel]
    return out


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(m: np.ndarray, *, scale: int = 4, border: int = 4) -> bytes:
    """A 1-bit greyscale PNG of the matrix with a quiet zone of `border` modules."""
    n = m.shape[0] + 2 * border
    full = np.zeros((n, n), dtype=np.uint8)
    full[border:-border, border:-border] = m
    light = (1 - full).astype(np.uint8)  # in greyscale 1 = white
    img = np.repeat(np.repeat(light, scale, axis=0), scale, axis=1)
    rows = np.packbits(img, axis=1)
    raw = np.hstack([np.zeros((rows.shape[0], 1), dtype=np.uint8), rows]).tobytes()
    size = n * scale
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 1, 0, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b""))


def qr_png(text: str, *, ecl: str = "M", scale: int = 4, border: int = 4) -> bytes:
    return png(matrix(text, ecl), scale=scale, border=border)


def svg(m: np.ndarray, *, scale: int = 4, border: int = 4, title: str | None = None) -> str:
    """An SVG of the matrix: one path, one unit per module, crisp edges."""
    n = m.shape[0] + 2 * border
    d = []
    for r, row in enumerate(m):
        c = 0
        while c < len(row):
            if row[c]:
                start = c
                while c < len(row) and row[c]:
                    c += 1
                d.append(f"M{start + border},{r + border}h{c - start}v1h{start - c}z")
            else:
                c += 1
    t = f"<title>{_xml(title)}</title>" if title else ""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {n} {n}" width="{n * scale}" '
            f'height="{n * scale}" shape-rendering="crispEdges">{t}<rect width="{n}" height="{n}" fill="#fff"/>'
            f'<path d="{"".join(d)}" fill="#000"/></svg>')


def qr_svg(text: str, *, ecl: str = "M", scale: int = 4, border: int = 4) -> str:
    return svg(matrix(text, ecl), scale=scale, border=border, title=text)


def _xml(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def reference_matrix(text: str, ecl: str = "M") -> np.ndarray:
    """qrcode's own matrix for `text` (slow): what `matrix` must equal."""
    q = qrcode.QRCode(error_correction=ECL[ecl], border=0)
    q.add_data(text)
    q.make(fit=True)
    return np.array(q.get_matrix(), dtype=np.uint8)
