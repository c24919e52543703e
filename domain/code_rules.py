"""Code rules: a code's structure from parts, validated when saved, and rendered in bulk.

A rule is either GS1 (`elements`: AI 01 GTIN, 10 lot, 11/17 dates, 21 serial, or AI 00 SSCC) or a house
code (`segments`). Composed values (a serial, a house code) are built from segments: literals, dates,
line and plant codes, the lot, one sequence, and check characters.

Within one block everything but the sequence is constant (lot, line, dates belong to the block), so a
block renders as a fixed-width byte template whose sequence and check columns numpy fills in bulk:
that is how export writes millions of codes per second. One code is the same path with n=1.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import date
from typing import Annotated, Any, Literal

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import InvalidInput
from domain import gs1

MAX_SEQ = 2**63 - 1  # sequence numbers are BIGINT
LEVELS = ("unit", "case", "pallet")
DATE_FORMATS = {"YYMMDD": 6, "YYYYMMDD": 8, "YYMM": 4, "YYDDD": 5, "YYWW": 4, "DDMMYY": 6}
# a random (anti-counterfeiting) sequence must leave a guesser at most this chance per try
RANDOM_SPARSITY = 1000


# --- the rule as it is saved (pydantic) -------------------------------------------------------------

class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Literal_(_Part):
    kind: Literal["literal"]
    # long enough for an item code (64) in a house code; a GS1 serial's parts are held to 20 characters in all
    text: str = Field(min_length=1, max_length=80)


class DatePart(_Part):
    kind: Literal["date"]
    source: Literal["production_date", "expiry_date"] = "production_date"
    format: Literal["YYMMDD", "YYYYMMDD", "YYMM", "YYDDD", "YYWW", "DDMMYY"] = "YYMMDD"


class LinePart(_Part):
    kind: Literal["line"]
    width: int = Field(ge=1, le=10)


class PlantPart(_Part):
    kind: Literal["plant"]
    code: str = Field(min_length=1, max_length=10)


class LotPart(_Part):
    kind: Literal["lot"]


class SequencePart(_Part):
    kind: Literal["sequence"]
    charset: Literal["numeric", "alphanumeric"] = "numeric"
    width: int = Field(ge=1, le=20)
    order: Literal["sequential", "random"] = "sequential"
    start: int = Field(default=0, ge=0)


class CheckPart(_Part):
    kind: Literal["check"]
    algorithm: Literal["gs1_mod10", "iso7064_mod37_36"] = "gs1_mod10"


Segment = Annotated[
    Literal_ | DatePart | LinePart | PlantPart | LotPart | SequencePart | CheckPart, Field(discriminator="kind")
]


class Element(_Part):
    """One GS1 element. 01: `value` (default: the item's GTIN). 10: the lot (or `segments`).
    11/17: the block's production/expiry date. 21: `segments` with one sequence. 00: SSCC from
    `extension` + `company_prefix` + a serial reference sequence (`order`)."""

    ai: Literal["00", "01", "10", "11", "17", "21"]
    value: str | None = None
    segments: list[Segment] | None = None
    extension: str | None = None
    company_prefix: str | None = None
    order: Literal["sequential", "random"] = "sequential"


class RuleSpec(_Part):
    elements: list[Element] | None = None
    segments: list[Segment] | None = None
    largest_order: int | None = Field(default=None, ge=1, description="the most codes one order issues")


# --- compiled form ------------------------------------------------------------------------------------

@dataclass
class Seq:
    width: int
    charset: str  # numeric | alphanumeric
    order: str
    start: int

    @property
    def radix(self) -> int:
        return 10 if self.charset == "numeric" else 36

    @property
    def domain(self) -> int:
        return min(self.radix**self.width, MAX_SEQ + 1)

    @property
    def capacity(self) -> int:
        return self.domain - (self.start if self.order == "sequential" else 0)


@dataclass
class Check:
    algorithm: str


@dataclass
class Var:
    """A per-block value (lot, line, date): constant within a block, known only at issuance."""

    name: str  # lot | line | production_date | expiry_date
    fmt: str | None = None
    width: int | None = None


Token = str | Seq | Check | Var


@dataclass
class IssueContext:
    """What a block knows that the rule does not: its lot, line and dates."""

    lot: str | None = None
    line: str | None = None
    production_date: date | None = None
    expiry_date: date | None = None
    gtin: str | None = None


def _fmt_date(d: date, fmt: str) -> str:
    if fmt == "YYMMDD":
        return d.strftime("%y%m%d")
    if fmt == "YYYYMMDD":
        return d.strftime("%Y%m%d")
    if fmt == "YYMM":
        return d.strftime("%y%m")
    if fmt == "YYDDD":
        return d.strftime("%y") + f"{d.timetuple().tm_yday:03d}"
    if fmt == "YYWW":
        return f"{d.isocalendar()[0] % 100:02d}{d.isocalendar()[1]:02d}"
    if fmt == "DDMMYY":
        return d.strftime("%d%m%y")
    raise ValueError(fmt)


def _bind(tokens: list[Token], ctx: IssueContext) -> list[str | Seq | Check]:
    """Replace per-block variables by their text for this block; refuses what a code cannot carry."""
    out: list[str | Seq | Check] = []
    for t in tokens:
        if isinstance(t, Var):
            if t.name in ("production_date", "expiry_date"):
                d = getattr(ctx, t.name)
                if d is None:
                    raise InvalidInput(f"the rule needs the {t.name.replace('_', ' ')}: give it when issuing",
                                       field=t.name)
                out.append(_fmt_date(d, t.fmt or "YYMMDD"))
            elif t.name == "line":
                if not ctx.line or len(ctx.line) != t.width:
                    raise InvalidInput(f"the rule needs a line code of exactly {t.width} characters, got "
                                       f"{ctx.line!r}: give the line code the rule expects", field="line")
                out.append(ctx.line)
            else:
                if not ctx.lot:
                    raise InvalidInput("the rule needs the lot number: issue the codes for a lot", field="lot")
                out.append(ctx.lot)
        else:
            out.append(t)
    return out


@dataclass
class Field_:
    """A composed value (a serial, an SSCC, a house code) after binding: constants, one sequence, checks."""

    tokens: list[str | Seq | Check]
    width: int = 0
    static: str | None = None  # the whole text when it has no sequence

    def __post_init__(self) -> None:
        self.width = sum(1 if isinstance(t, Check) else t.width if isinstance(t, Seq) else len(t)
                         for t in self.tokens)
        if all(isinstance(t, str) for t in self.tokens):
            self.static = "".join(t for t in self.tokens)  # type: ignore[misc]


class SerialPermutation:
    """A keyed permutation of [0, domain): a Feistel network with AES-128 as round function and
    cycle walking. Random serials are perm(seq): unique by construction, not guessable without the key,
    and a scanned serial maps back to its sequence number (and so its block) with the inverse."""

    ROUNDS = 8

    def __init__(self, key_hex: str, domain: int) -> None:
        self.domain = domain
        bits = max(2, math.ceil(math.log2(domain)))
        bits += bits % 2
        self.half = bits // 2
        self.mask = np.uint64((1 << self.half) - 1)
        self._cipher = Cipher(algorithms.AES(bytes.fromhex(key_hex)), modes.ECB())

    def _f(self, rnd: int, x: np.ndarray) -> np.ndarray:
        blocks = np.zeros((len(x), 2), dtype=np.uint64)
        blocks[:, 0] = x
        blocks[:, 1] = np.uint64(rnd + 1)
        enc = self._cipher.encryptor()
        out = np.frombuffer(enc.update(blocks.tobytes()) + enc.finalize(), dtype=np.uint64).reshape(-1, 2)
        return out[:, 0] & self.mask

    def _round_trip(self, x: np.ndarray, inverse: bool) -> np.ndarray:
        h = np.uint64(self.half)
        left, right = x >> h, x & self.mask
        if not inverse:
            for r in range(self.ROUNDS):
                left, right = right, left ^ self._f(r, right)
        else:
            for r in reversed(range(self.ROUNDS)):
                left, right = right ^ self._f(r, left), left
        return (left << h) | right

    def _walk(self, x: np.ndarray, inverse: bool) -> np.ndarray:
        x = np.asarray(x, dtype=np.uint64)
        y = self._round_trip(x, inverse)
        bad = y >= np.uint64(self.domain)
        while bad.any():  # cycle walking: stay inside the domain; about 1.2 tries at most on average
            y[bad] = self._round_trip(y[bad], inverse)
            bad = y >= np.uint64(self.domain)
        return y

    def forward(self, seqs: np.ndarray) -> np.ndarray:
        return self._walk(seqs, inverse=False)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return self._walk(values, inverse=True)


def _digits(n: np.ndarray, width: int, radix: int) -> np.ndarray:
    """(len(n), width) ASCII digits of n in base 10 or 36, most significant first."""
    out = np.empty((len(n), width), dtype=np.uint8)
    alphabet = np.frombuffer(gs1.ALNUM36.encode(), dtype=np.uint8)
    v = n.astype(np.uint64, copy=True)
    r = np.uint64(radix)
    for j in range(width - 1, -1, -1):
        out[:, j] = alphabet[(v % r).astype(np.intp)]
        v //= r
    return out


_ALNUM_VALUE = np.full(256, 255, dtype=np.int64)
for _i, _c in enumerate(gs1.ALNUM36.encode()):
    _ALNUM_VALUE[_c] = _i


def _check_column(body: np.ndarray, algorithm: str) -> np.ndarray:
    """Check characters of each row of `body` (ASCII), vectorised."""
    n, width = body.shape
    if algorithm == "gs1_mod10":
        weights = np.array([3 if (width - 1 - j) % 2 == 0 else 1 for j in range(width)], dtype=np.int64)
        total = ((body.astype(np.int64) - 48) * weights).sum(axis=1)
        return ((10 - total % 10) % 10 + 48).astype(np.uint8)
    vals = _ALNUM_VALUE[body]
    p = np.full(n, 36, dtype=np.int64)
    for j in range(width):
        s = (p + vals[:, j]) % 36
        s[s == 0] = 36
        p = (s * 2) % 37
    alphabet = np.frombuffer(gs1.ALNUM36.encode(), dtype=np.uint8)
    return alphabet[(37 - p) % 36]


class CompiledRule:
    """A rule version ready to render and parse codes."""

    def __init__(self, spec: RuleSpec, *, level: str, secret: str, gtin: str | None) -> None:
        self.spec = spec
        self.level = level
        self.secret = secret
        self.fields: dict[str, list[Token]] = {}  # AI (or "code" for a house code) -> tokens
        self.seq: Seq | None = None
        self.seq_field: str | None = None
        if spec.elements:
            self.scheme = "gs1"
            for el in spec.elements:
                self.fields[el.ai] = self._element_tokens(el, gtin)
        else:
            self.scheme = "house"
            self.fields["code"] = self._segments(spec.segments or [], "code")
        self.key_ai = "00" if "00" in self.fields else "01" if self.scheme == "gs1" else None
        self._perm: SerialPermutation | None = None

    # -- compile
    def _segments(self, segments: list[Any], name: str) -> list[Token]:
        out: list[Token] = []
        for s in segments:
            if isinstance(s, Literal_):
                out.append(s.text)
            elif isinstance(s, PlantPart):
                out.append(s.code)
            elif isinstance(s, DatePart):
                out.append(Var(s.source, fmt=s.format, width=DATE_FORMATS[s.format]))
            elif isinstance(s, LinePart):
                out.append(Var("line", width=s.width))
            elif isinstance(s, LotPart):
                out.append(Var("lot"))
            elif isinstance(s, SequencePart):
                self.seq = Seq(s.width, s.charset, s.order, s.start)
                self.seq_field = name
                out.append(self.seq)
            elif isinstance(s, CheckPart):
                out.append(Check(s.algorithm))
        return out

    def _element_tokens(self, el: Element, gtin: str | None) -> list[Token]:
        if el.ai == "01":
            return [el.value or gtin or ""]
        if el.ai == "10":
            return self._segments(el.segments, "10") if el.segments else [Var("lot")]
        if el.ai in ("11", "17"):
            return [Var("production_date" if el.ai == "11" else "expiry_date", fmt="YYMMDD", width=6)]
        if el.ai == "21":
            return self._segments(el.segments or [], "21")
        # 00: extension + company prefix + serial reference + check digit
        width = 16 - len(el.company_prefix or "")
        self.seq = Seq(width, "numeric", el.order, 0)
        self.seq_field = "00"
        return [f"{el.extension}{el.company_prefix}", self.seq, Check("gs1_mod10")]

    @property
    def capacity(self) -> int:
        return self.seq.capacity if self.seq else 1

    @property
    def perm(self) -> SerialPermutation:
        assert self.seq is not None
        if self._perm is None:
            self._perm = SerialPermutation(self.secret, self.seq.domain)
        return self._perm

    # -- numbers
    def numbers(self, seqs: np.ndarray) -> np.ndarray:
        """The number each sequence index shows on the code."""
        assert self.seq is not None
        if self.seq.order == "random":
            return self.perm.forward(seqs)
        return np.asarray(seqs, dtype=np.uint64) + np.uint64(self.seq.start)

    def seq_of_number(self, number: int) -> int | None:
        assert self.seq is not None
        if number >= self.seq.domain:
            return None
        if self.seq.order == "random":
            return int(self.perm.inverse(np.array([number], dtype=np.uint64))[0])
        s = number - self.seq.start
        return s if s >= 0 else None

    # -- render
    def bind(self, ctx: IssueContext) -> BoundRule:
        return BoundRule(self, {name: Field_(_bind(tokens, ctx)) for name, tokens in self.fields.items()})

    # -- parse: the sequence number a code's composed value carries, or None if it is not of this rule
    def regex(self, name: str) -> re.Pattern[str]:
        parts = []
        for t in self.fields[name]:
            if isinstance(t, str):
                parts.append(re.escape(t))
            elif isinstance(t, Var):
                parts.append(f".{{{t.width}}}" if t.width else ".+?")
            elif isinstance(t, Seq):
                cls = "0-9" if t.charset == "numeric" else "0-9A-Z"
                parts.append(f"(?P<seq>[{cls}]{{{t.width}}})")
            else:
                parts.append("[0-9A-Z]")
        return re.compile("".join(parts))

    def parse_seq(self, value: str) -> int | None:
        if self.seq_field is None:
            return None
        m = self.regex(self.seq_field).fullmatch(value)
        if not m:
            return None
        return self.seq_of_number(int(m.group("seq"), self.seq.radix if self.seq else 10))


@dataclass
class Rendered:
    value: str  # canonical: /01/{gtin}/21/{serial}, /00/{sscc}, or the house code
    elements: list[tuple[str, str]] = field(default_factory=list)
    element_string: str = ""
    digital_link: str = ""
    text: str = ""  # the human-readable line of a label


class BoundRule:
    """A rule bound to one block's context: renders any sequence numbers of that block."""

    def __init__(self, rule: CompiledRule, fields: dict[str, Field_]) -> None:
        self.rule = rule
        self.fields = fields

    def field_matrix(self, name: str, numbers: np.ndarray) -> np.ndarray:
        f = self.fields[name]
        out = np.empty((len(numbers), f.width), dtype=np.uint8)
        pos = 0
        for t in f.tokens:
            if isinstance(t, str):
                b = t.encode()
                out[:, pos:pos + len(b)] = np.frombuffer(b, dtype=np.uint8)
                pos += len(b)
            elif isinstance(t, Seq):
                out[:, pos:pos + t.width] = _digits(numbers, t.width, t.radix)
                pos += t.width
            else:
                out[:, pos] = _check_column(out[:, :pos], t.algorithm)
                pos += 1
        return out

    def layout(self, fmt: str, domain: str) -> list[str | tuple[str, ...]]:
        """One output line as constants and field references: ("field", name)."""
        r = self.rule
        if r.scheme == "house":
            code: list[Any] = [("field", "code")]
            es: list[Any] = []
            dl: list[Any] = []
        else:
            key = r.key_ai or "01"
            code = [f"/{key}/", ("field", key)]
            if key == "01" and "21" in self.fields:
                code += ["/21/", ("field", "21")]
            order = [key] + [a for a in ("10", "21", "11", "17") if a in self.fields and a != key]
            es = []
            for ai in order:
                es += [f"({ai})", ("field", ai)]
            dl = [domain.rstrip("/") + f"/{key}/", ("field", key)]
            for q in ("10", "21"):
                if q in self.fields and key == "01":
                    dl += [f"/{q}/", ("dl", q)]
            attrs = [a for a in ("11", "17") if a in self.fields]
            for i, a in enumerate(attrs):
                dl += [("?" if i == 0 else "&") + f"{a}=", ("dl", a)]
        if fmt == "uri":  # one Digital Link URI per line (house codes: the code), for printer software
            return [*(dl or code), "\n"]
        if fmt == "csv":
            def q(parts: list[Any]) -> list[Any]:
                # a CSV cell needs quotes only for , " or newline; GS1 CSET 82 allows , and "
                return ['"', *[("csv", p) if isinstance(p, str) else p for p in parts], '"'] if parts else []
            return [*q(code), ",", *q(es), ",", *q(dl), "\n"]
        # ndjson
        def j(parts: list[Any]) -> list[Any]:
            return ['"', *[("json", p) if isinstance(p, str) else p for p in parts], '"']
        return ['{"code":', *j(code), ',"element_string":', *j(es), ',"digital_link":', *j(dl), "}\n"]

    def render_lines(self, numbers: np.ndarray, fmt: str, domain: str) -> bytes:
        """Export lines for these code numbers as one bytes object (fixed-width rows filled by numpy)."""
        pieces: list[tuple[str, Any]] = []  # ("const", bytes) | ("field", matrix)
        cache: dict[str, np.ndarray] = {}
        for p in self.layout(fmt, domain):
            if isinstance(p, str):
                pieces.append(("const", p.encode()))
                continue
            kind, arg = p[0], p[1]
            if kind in ("csv", "json"):
                text = arg.replace('"', '""') if kind == "csv" else json.dumps(arg)[1:-1]
                pieces.append(("const", text.encode()))
                continue
            f = self.fields[arg]
            if f.static is not None:
                pieces.append(("const", self._escape(f.static, kind, fmt).encode()))
                continue
            consts = [t for t in f.tokens if isinstance(t, str)]
            if any(self._escape(c, kind, fmt) != c for c in consts):
                mat = self._escaped_matrix(arg, numbers, kind, fmt)
            else:
                if arg not in cache:
                    cache[arg] = self.field_matrix(arg, numbers)
                mat = cache[arg]
            pieces.append(("field", mat))
        n = len(numbers)
        width = sum(len(v) if k == "const" else v.shape[1] for k, v in pieces)
        out = np.empty((n, width), dtype=np.uint8)
        pos = 0
        for k, v in pieces:
            w = len(v) if k == "const" else v.shape[1]
            out[:, pos:pos + w] = np.frombuffer(v, dtype=np.uint8) if k == "const" else v
            pos += w
        return out.tobytes()

    @staticmethod
    def _escape(text: str, kind: str, fmt: str) -> str:
        if kind == "dl":
            text = gs1._enc(text)
        if fmt == "uri":
            return text
        return text.replace('"', '""') if fmt == "csv" else json.dumps(text)[1:-1]

    def _escaped_matrix(self, name: str, numbers: np.ndarray, kind: str, fmt: str) -> np.ndarray:
        # rare: a literal inside a serial that needs %-encoding or JSON/CSV escaping; go code by code
        rows = [self._escape(text, kind, fmt).encode() for text in self.texts(name, numbers)]
        return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), -1)

    def texts(self, name: str, numbers: np.ndarray) -> list[str]:
        f = self.fields[name]
        if f.static is not None:
            return [f.static] * len(numbers)
        mat = self.field_matrix(name, numbers)
        return [bytes(row).decode() for row in mat]

    def render(self, numbers: np.ndarray, domain: str) -> list[Rendered]:
        r = self.rule
        cols = {name: self.texts(name, numbers) for name in self.fields}
        out = []
        for i in range(len(numbers)):
            if r.scheme == "house":
                v = cols["code"][i]
                out.append(Rendered(value=v, text=v))
                continue
            key = r.key_ai or "01"
            order = [key] + [a for a in ("10", "21", "11", "17") if a in cols and a != key]
            elements = [(ai, cols[ai][i]) for ai in order]
            value = f"/{key}/{cols[key][i]}" + (f"/21/{cols['21'][i]}" if key == "01" and "21" in cols else "")
            es = gs1.element_string(elements)
            out.append(Rendered(value=value, elements=elements, element_string=es,
                                digital_link=gs1.digital_link(domain, elements), text=es))
        return out


# --- validation -------------------------------------------------------------------------------------

def _part_name(i: int, what: str) -> str:
    return f"part {i + 1} ({what})"


def _segment_problems(segs: list[Any], where: str, *, allowed: str) -> list[str]:
    problems = []
    seqs = [s for s in segs if isinstance(s, SequencePart)]
    if len(seqs) != 1:
        problems.append(f"{where}: needs exactly one sequence segment, has {len(seqs)}")
    body_numeric = True
    body_alnum = True
    for j, s in enumerate(segs):
        name = f"{where} segment {j + 1} ({s.kind})"
        if isinstance(s, Literal_ | PlantPart):
            text = s.text if isinstance(s, Literal_) else s.code
            if allowed == "cset82" and (p := gs1.cset82_problem(text)):
                problems.append(f"{name}: {p}; use letters, digits and - . / _ instead")
            body_numeric &= text.isdigit()
            body_alnum &= all(c in gs1.ALNUM36 for c in text)
        elif isinstance(s, SequencePart):
            body_numeric &= s.charset == "numeric"
            radix = 10 if s.charset == "numeric" else 36
            if s.order == "sequential" and s.start >= radix ** s.width:
                problems.append(f"{name}: start {s.start} does not fit in {s.width} {s.charset} characters "
                                f"(at most {radix ** s.width - 1})")
        elif isinstance(s, LotPart | LinePart):
            body_numeric = body_alnum = False
        elif isinstance(s, CheckPart):
            if s.algorithm == "gs1_mod10" and not body_numeric:
                problems.append(f"{name}: GS1 mod-10 needs digits only before it; use iso7064_mod37_36 "
                                "for an alphanumeric code, or make the parts before it numeric")
            if s.algorithm == "iso7064_mod37_36" and not body_alnum:
                problems.append(f"{name}: ISO 7064 MOD 37,36 needs 0-9 and A-Z only before it; "
                                "remove other characters, lots and line codes before the check character")
        elif isinstance(s, DatePart):
            pass
    return problems


def _segment_width(s: Any) -> int | None:
    if isinstance(s, LotPart):
        return None
    if isinstance(s, Literal_):
        return len(s.text)
    if isinstance(s, PlantPart):
        return len(s.code)
    if isinstance(s, DatePart):
        return DATE_FORMATS[s.format]
    if isinstance(s, LinePart | SequencePart):
        return s.width
    return 1  # check character


def _max_width(segs: list[Any]) -> int | None:
    widths = [_segment_width(s) for s in segs]
    return None if None in widths else sum(w for w in widths if w is not None)


def validate_spec(spec: RuleSpec, *, level: str, gtin: str | None) -> None:
    """Refuse a rule that cannot produce valid codes; every message names the part and what to fix."""
    problems: list[str] = []
    if level not in LEVELS:
        problems.append(f"level {level!r} is not one of {', '.join(LEVELS)}")
    if bool(spec.elements) == bool(spec.segments):
        raise InvalidInput("a rule has either GS1 `elements` or house-code `segments`, not both and not "
                           "neither: give one of them", field="spec")
    seq: Seq | None = None
    if spec.elements:
        ais = [e.ai for e in spec.elements]
        dup = {a for a in ais if ais.count(a) > 1}
        if dup:
            problems.append(f"AI {', '.join(sorted(dup))} appears more than once: keep one")
        if "00" in ais and "01" in ais:
            problems.append("AI 00 (SSCC) and AI 01 (GTIN) are two primary keys: a code has one; "
                            "use 00 for a logistic unit or 01 + 21 for a trade item")
        if "00" not in ais and "01" not in ais:
            problems.append("a GS1 rule needs a primary key: add AI 01 (GTIN) or AI 00 (SSCC)")
        if "01" in ais and "21" not in ais:
            problems.append("AI 01 without AI 21 identifies a class, not one thing: add an AI 21 serial part")
        if "00" in ais and len(ais) > 1:
            problems.append("AI 00 (SSCC) takes no other elements in a code: remove "
                            + ", ".join(f"AI {a}" for a in ais if a != "00"))
        for i, e in enumerate(spec.elements):
            title = gs1.AIS[e.ai][0]
            name = _part_name(i, f"AI {e.ai} {title}")
            if e.ai == "01":
                g = e.value or gtin
                if not g:
                    problems.append(f"{name}: the item has no GTIN; give the GTIN-14 as `value`")
                else:
                    if len(g) != 14:
                        problems.append(f"{name}: a GTIN in AI 01 is 14 digits, got {len(g)}; left-pad a "
                                        "GTIN-8/12/13 with zeros")
                    elif (p := gs1.element_problem("01", g)):
                        problems.append(f"{name}: {p}")
            elif e.ai == "00":
                if level == "unit":
                    problems.append(f"{name}: an SSCC identifies a case or pallet, not a unit: use AI 01 + 21")
                if not (e.extension and len(e.extension) == 1 and e.extension.isdigit()):
                    problems.append(f"{name}: `extension` must be one digit 0-9")
                gcp = e.company_prefix or ""
                if not (gcp.isdigit() and 6 <= len(gcp) <= 12):
                    problems.append(f"{name}: `company_prefix` must be the 6 to 12 digits of your GS1 "
                                    f"Company Prefix, got {gcp!r}")
                else:
                    seq = Seq(16 - len(gcp), "numeric", e.order, 0)
            elif e.ai == "21":
                if not e.segments:
                    problems.append(f"{name}: give `segments` with one sequence, e.g. "
                                    '[{"kind": "sequence", "width": 12}]')
                else:
                    problems += _segment_problems(e.segments, name, allowed="cset82")
                    w = _max_width(e.segments)
                    if w is None:
                        problems.append(f"{name}: a lot inside the serial makes its length unbounded; "
                                        "put the lot in AI 10 instead")
                    elif w > 20:
                        problems.append(f"{name}: a serial is at most 20 characters; these parts make {w}. "
                                        "Shorten the literals or the sequence width")
                    sp = next((s for s in e.segments if isinstance(s, SequencePart)), None)
                    if sp:
                        seq = Seq(sp.width, sp.charset, sp.order, sp.start)
            elif e.ai == "10" and e.segments:
                problems += [p for p in _segment_problems(e.segments, name, allowed="cset82")
                             if "exactly one sequence" not in p]
            elif e.value is not None and e.ai in ("10", "11", "17"):
                problems.append(f"{name}: the {title} comes from the block being issued; remove `value`")
    else:
        segs = spec.segments or []
        problems += _segment_problems(segs, "house code", allowed="any")
        sp = next((s for s in segs if isinstance(s, SequencePart)), None)
        if sp:
            seq = Seq(sp.width, sp.charset, sp.order, sp.start)
    if seq is not None and spec.largest_order:
        if seq.capacity < spec.largest_order:
            problems.append(
                f"the sequence ({seq.width} {seq.charset} characters) holds {seq.capacity:,} codes, fewer than "
                f"the largest order of {spec.largest_order:,}: widen the sequence"
                + (" or use alphanumeric" if seq.charset == "numeric" else ""))
        elif seq.order == "random" and seq.domain < spec.largest_order * RANDOM_SPARSITY:
            problems.append(
                f"random serials of {seq.width} {seq.charset} characters for orders of "
                f"{spec.largest_order:,} let a counterfeiter guess a valid serial more often than once in "
                f"{RANDOM_SPARSITY:,} tries: widen the sequence to at least "
                f"{math.ceil(math.log(spec.largest_order * RANDOM_SPARSITY, seq.radix))} characters")
    if problems:
        raise InvalidInput("; ".join(problems), field="spec")


def parse_spec(raw: dict[str, Any]) -> RuleSpec:
    try:
        return RuleSpec.model_validate(raw)
    except ValidationError as exc:
        msg = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"the rule is not well formed: {msg}", field="spec") from None


def namespace_of(spec: RuleSpec, *, item_code: str, level: str, gtin: str | None) -> str:
    """Sequence numbers never repeat inside a namespace, whatever the rule version."""
    if spec.elements:
        by_ai = {e.ai: e for e in spec.elements}
        if "00" in by_ai:
            e = by_ai["00"]
            return f"sscc:{e.extension}{e.company_prefix}"
        return f"sgtin:{by_ai['01'].value or gtin}"
    return f"house:{item_code}:{level}"


# The default house rule before house codes were made unique across items: every item's codes were `U` + the
# same 12-digit sequence, each item counting from 1, so two items printed the same texts. Rule versions of this
# spec that the hub saved itself are replaced by the item's own default at the next issuance (codes.current_rule).
LEGACY_HOUSE_DEFAULT = {"segments": [{"kind": "literal", "text": "U"},
                                     {"kind": "sequence", "charset": "numeric", "width": 12, "order": "sequential",
                                      "start": 1}]}


def default_spec(level: str, gtin: str | None, item_code: str) -> RuleSpec:
    """What the hub issues when an item has no rule: GTIN + 12-digit serial (units), else a house code
    `<level letter>-<item code>-<12-digit sequence>`. The item code makes the text the item's own: two items'
    default codes of one length have their item codes at the same place, so they never read the same."""
    if gtin and level == "unit":
        return RuleSpec(elements=[Element(ai="01", value=gtin), Element(
            ai="21", segments=[SequencePart(kind="sequence", width=12, start=1)])])
    return RuleSpec(segments=[Literal_(kind="literal", text=f"{level[0].upper()}-{item_code}-"),
                              SequencePart(kind="sequence", width=12, start=1)])


# --- house codes of different code spaces must never read the same ------------------------------------------
# A house code has no GTIN or company prefix to keep it apart from other items' codes: only its text does. Two
# house rules in different namespaces (items or levels) could print the same text unless some position can never
# hold the same character in both. The test is conservative: it compares per-position character classes (literal
# characters, digits, 0-9A-Z, anything for a line code) and treats a lot as any text of any length.

_DIGITS = frozenset("0123456789")
_ALNUM = frozenset(gs1.ALNUM36)
_LOT = "lot"  # marks a part of any length
CharClass = frozenset[str] | None  # None: any character


def _house_shape(spec: RuleSpec) -> list[CharClass | str]:
    out: list[CharClass | str] = []
    for s in spec.segments or []:
        if isinstance(s, Literal_ | PlantPart):
            out += [frozenset(c) for c in (s.text if isinstance(s, Literal_) else s.code)]
        elif isinstance(s, DatePart):
            out += [_DIGITS] * DATE_FORMATS[s.format]
        elif isinstance(s, LinePart):
            out += [None] * s.width
        elif isinstance(s, LotPart):
            out.append(_LOT)
        elif isinstance(s, SequencePart):
            out += [_DIGITS if s.charset == "numeric" else _ALNUM] * s.width
        elif isinstance(s, CheckPart):
            out.append(_DIGITS if s.algorithm == "gs1_mod10" else _ALNUM)
    return out


def _meet(a: CharClass | str, b: CharClass | str) -> bool:
    return a is None or b is None or bool(a & b)  # type: ignore[operator]


def _all_meet(a: list[Any], b: list[Any]) -> bool:
    return all(_meet(x, y) for x, y in zip(a, b, strict=True))


def house_codes_could_meet(a: RuleSpec, b: RuleSpec) -> bool:
    """Whether a code of house rule `a` could read the same as a code of house rule `b` (conservative)."""
    sa, sb = _house_shape(a), _house_shape(b)
    if _LOT not in sa and _LOT not in sb:
        return len(sa) == len(sb) and _all_meet(sa, sb)
    if _LOT in sa and _LOT not in sb:
        sa, sb = sb, sa  # sa fixed, sb variable (or both variable)
    head_b, tail_b = sb[:sb.index(_LOT)], sb[len(sb) - sb[::-1].index(_LOT):]
    if _LOT not in sa:
        if len(sa) < len(sb):  # every lot is at least one character
            return False
        return _all_meet(sa[:len(head_b)], head_b) and _all_meet(sa[len(sa) - len(tail_b):], tail_b)
    head_a, tail_a = sa[:sa.index(_LOT)], sa[len(sa) - sa[::-1].index(_LOT):]
    n, m = min(len(head_a), len(head_b)), min(len(tail_a), len(tail_b))
    return _all_meet(head_a[:n], head_b[:n]) and _all_meet(tail_a[len(tail_a) - m:], tail_b[len(tail_b) - m:])
