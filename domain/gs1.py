"""GS1 identifiers: check digits, GTIN and SSCC, element strings and Digital Link URIs.

Pure functions, no database. Facts from the GS1 General Specifications and the Digital Link
standard as summarised in shared/standards/EPCIS_NOTES.md §5.
"""

from __future__ import annotations

import re
from datetime import date
from urllib.parse import quote, unquote

# CSET 82: the characters GS1 allows in AI 10 (lot) and AI 21 (serial).
CSET82 = frozenset("!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz")
ALNUM36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# AI -> (title, fixed length or None, max length, digits only)
AIS: dict[str, tuple[str, int | None, int, bool]] = {
    "00": ("SSCC", 18, 18, True),
    "01": ("GTIN", 14, 14, True),
    "10": ("batch/lot", None, 20, False),
    "11": ("production date", 6, 6, True),
    "17": ("expiry date", 6, 6, True),
    "21": ("serial", None, 20, False),
}
# Digital Link: primary keys, their qualifiers in the order the path must give them.
DL_QUALIFIERS = {"01": ("22", "10", "21"), "00": ()}
DL_ATTRIBUTES = ("11", "17")


def mod10(body: str) -> int:
    """GS1 mod-10 check digit of `body` (the digits without the check digit): weights 3,1,3... from the right."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        total += (ord(ch) - 48) * (3 if i % 2 == 0 else 1)
    return (10 - total % 10) % 10


def check_digit_problem(value: str, what: str = "GTIN") -> str | None:
    """None if `value` is digits with a correct GS1 check digit, else what is wrong and what to do."""
    if not value.isdigit():
        return f"{what} {value!r} must be digits only"
    expected = mod10(value[:-1])
    if int(value[-1]) != expected:
        return f"{what} {value} has check digit {value[-1]}, but it should be {expected}: correct the {what}"
    return None


def gtin14(gtin: str) -> str:
    """A GTIN-8/12/13/14 as the 14 digits Digital Link and AI 01 use (left-padded with zeros)."""
    g = gtin.strip()
    if not g.isdigit() or len(g) not in (8, 12, 13, 14):
        raise ValueError(f"GTIN {gtin!r} must be 8, 12, 13 or 14 digits")
    return g.zfill(14)


def sscc(extension: str, company_prefix: str, serial_reference: int) -> str:
    """SSCC: extension digit + company prefix + serial reference (together 17 digits) + check digit."""
    width = 16 - len(company_prefix)
    body = f"{extension}{company_prefix}{serial_reference:0{width}d}"
    if len(body) != 17:
        raise ValueError(f"serial reference {serial_reference} does not fit in {width} digits")
    return body + str(mod10(body))


# ISO/IEC 7064 MOD 37,36 (hybrid system): one check character from 0-9A-Z for alphanumeric house codes.
def iso7064_mod37_36(body: str) -> str:
    m = 36
    p = m
    for ch in body.upper():
        v = ALNUM36.find(ch)
        if v < 0:
            raise ValueError(f"{ch!r} is not 0-9 or A-Z: ISO 7064 MOD 37,36 takes alphanumerics only")
        s = (p + v) % m or m
        p = (s * 2) % (m + 1)
    return ALNUM36[(m + 1 - p) % m]


def iso7064_mod37_36_valid(value: str) -> bool:
    return len(value) >= 2 and iso7064_mod37_36(value[:-1]) == value[-1].upper()


def yymmdd(d: date) -> str:
    return d.strftime("%y%m%d")


def cset82_problem(value: str) -> str | None:
    bad = sorted({c for c in value if c not in CSET82})
    if bad:
        return "characters " + " ".join(repr(c) for c in bad) + " are not in the GS1 character set 82"
    return None


def element_problem(ai: str, value: str) -> str | None:
    """What is wrong with `value` as the data of `ai`, or None."""
    title, fixed, maxlen, digits = AIS[ai]
    if fixed is not None and len(value) != fixed:
        return f"AI {ai} ({title}) must be exactly {fixed} digits, got {len(value)}"
    if len(value) > maxlen or not value:
        return f"AI {ai} ({title}) must be 1 to {maxlen} characters, got {len(value)}"
    if digits and not value.isdigit():
        return f"AI {ai} ({title}) must be digits only"
    if not digits:
        return cset82_problem(value)
    if ai in ("01", "00"):
        return check_digit_problem(value, title)
    return None


def element_string(elements: list[tuple[str, str]]) -> str:
    """The human-readable GS1 element string: (01)09506000134352(10)L1(21)0001."""
    return "".join(f"({ai}){v}" for ai, v in elements)


def _enc(value: str) -> str:
    # RFC 3986 unreserved characters and "'" stay literal; everything else is %-encoded (canonical DL form)
    return quote(value, safe="'")


def digital_link(domain: str, elements: list[tuple[str, str]]) -> str:
    """A GS1 Digital Link URI: primary key and qualifiers in the path (in the order the standard fixes),
    data attributes (dates) in the query string."""
    by_ai = dict(elements)
    key = "00" if "00" in by_ai else "01"
    path = f"/{key}/{by_ai[key]}"
    for q in DL_QUALIFIERS[key]:
        if q in by_ai:
            path += f"/{q}/{_enc(by_ai[q])}"
    query = "&".join(f"{a}={_enc(by_ai[a])}" for a in DL_ATTRIBUTES if a in by_ai)
    return f"{domain.rstrip('/')}{path}" + (f"?{query}" if query else "")


_DL_PATH = re.compile(r"/(00|01|10|21|22)/([^/?#]+)")


def parse_digital_link(uri: str) -> dict[str, str]:
    """AIs of a Digital Link URI's path (primary key and qualifiers), percent-decoded."""
    path = uri.split("?", 1)[0].split("#", 1)[0]
    if "://" in path:
        path = "/" + path.split("://", 1)[1].split("/", 1)[-1]
    return {m.group(1): unquote(m.group(2)) for m in _DL_PATH.finditer(path)}
