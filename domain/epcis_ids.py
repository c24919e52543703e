"""GS1 identifiers for EPCIS: EPC URNs <-> GS1 Digital Link, canonical forms, CBV vocabulary URIs.

The hub stores and matches identifiers in one canonical form: the constrained GS1 Digital Link on
`https://id.gs1.org`, without a query string (EPCIS_NOTES §5.4/5.5, §6). Identifiers that are neither EPC
URNs nor Digital Links (the hub's own `urn:tracehub:...`, supplier URIs) are kept as given.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import quote, unquote, urlsplit

GS1_DL = "https://id.gs1.org"
CBV_WEB = "https://ref.gs1.org/cbv/"

# CBV vocabularies: bare JSON term -> Web URI prefix, and the URN prefix of the same vocabulary
_VOCAB = {
    "bizStep": ("BizStep-", "urn:epcglobal:cbv:bizstep:"),
    "disposition": ("Disp-", "urn:epcglobal:cbv:disp:"),
    "bizTransactionType": ("BTT-", "urn:epcglobal:cbv:btt:"),
    "sourceDestType": ("SDT-", "urn:epcglobal:cbv:sdt:"),
    "errorReason": ("ER-", "urn:epcglobal:cbv:er:"),
}
_URN_TO_WEB = {urn: CBV_WEB + web for web, urn in _VOCAB.values()}


def check_digit(body: str) -> str:
    """GS1 mod-10 check digit of the digits `body` (weights 3,1,3... from the right)."""
    odd = sum(map(int, body[-1::-2]))  # rightmost digit and every second one leftwards: weight 3
    even = sum(map(int, body[-2::-2]))
    return str((10 - (3 * odd + even) % 10) % 10)


def _dl_value(v: str) -> str:
    # canonical percent-encoding of an AI value: everything outside the unreserved set, but ' stays literal
    return quote(unquote(v), safe="'")


def urn_to_dl(urn: str) -> str | None:
    """An EPC pure-identity URN, LGTIN class or SGTIN pattern as canonical Digital Link; None if not one."""
    m = re.match(r"urn:epc:(id|class|idpat):([a-z]+):(.+)$", urn)
    if not m:
        return None
    kind, scheme, rest = m.groups()
    parts = rest.split(".")
    try:
        if scheme in ("sgtin", "lgtin") and len(parts) >= 3:
            gcp, ref = parts[0], parts[1]
            value = ".".join(parts[2:])
            if len(gcp) + len(ref) != 13 or not (gcp + ref).isdigit():
                return None
            body = ref[0] + gcp + ref[1:]
            gtin = body + check_digit(body)
            if kind == "idpat":
                return f"{GS1_DL}/01/{gtin}" if value == "*" else None
            ai = "21" if scheme == "sgtin" else "10"
            return f"{GS1_DL}/01/{gtin}/{ai}/{_dl_value(value)}"
        if scheme == "sscc" and len(parts) == 2:
            gcp, ref = parts
            if len(gcp) + len(ref) != 17 or not (gcp + ref).isdigit():
                return None
            body = ref[0] + gcp + ref[1:]
            return f"{GS1_DL}/00/{body}{check_digit(body)}"
        if scheme == "sgln" and len(parts) == 3:
            gcp, loc, ext = parts
            if len(gcp) + len(loc) != 12:
                return None
            gln = gcp + loc + check_digit(gcp + loc)
            return f"{GS1_DL}/414/{gln}" + ("" if ext == "0" else f"/254/{_dl_value(ext)}")
        if scheme == "pgln" and len(parts) == 2:
            gcp, party = parts
            if len(gcp) + len(party) != 12:
                return None
            return f"{GS1_DL}/417/{gcp}{party}{check_digit(gcp + party)}"
        if scheme == "grai" and len(parts) == 3:
            gcp, asset, serial = parts
            body = "0" + gcp + asset
            return f"{GS1_DL}/8003/{body}{check_digit(body)}{_dl_value(serial)}"
        if scheme == "giai" and len(parts) == 2:
            return f"{GS1_DL}/8004/{parts[0]}{_dl_value(parts[1])}"
        if scheme == "gdti" and len(parts) == 3:
            gcp, doc, serial = parts
            body = gcp + doc
            return f"{GS1_DL}/253/{body}{check_digit(body)}{_dl_value(serial)}"
    except (IndexError, ValueError):
        return None
    return None


# primary-key AIs of Digital Link and the qualifiers allowed after them, in order
_DL_KEYS = {"01": ("22", "10", "21"), "00": (), "414": ("254",), "417": (), "8003": (), "8004": (), "253": ()}
_DL_PATH = re.compile(r"/(01|00|414|417|8003|8004|253)/([^/]+)((?:/[0-9]{2,4}/[^/]+)*)/?$")


def dl_canonical(uri: str) -> str | None:
    """Any-domain GS1 Digital Link as the canonical constrained form on id.gs1.org; None if not a DL."""
    if not uri.startswith(("http://", "https://")):
        return None
    path = urlsplit(uri).path
    m = _DL_PATH.search(path)
    if not m:
        return None
    key, value, tail = m.group(1), unquote(m.group(2)), m.group(3)
    if key == "01":
        if not value.isdigit() or len(value) not in (8, 12, 13, 14):
            return None
        value = value.zfill(14)
    out = f"{GS1_DL}/{key}/{_dl_value(value)}"
    allowed = _DL_KEYS[key]
    segs = [s for s in tail.split("/") if s]
    last = -1
    for ai, v in zip(segs[0::2], segs[1::2], strict=False):
        if ai not in allowed or allowed.index(ai) <= last:
            return None
        last = allowed.index(ai)
        out += f"/{ai}/{_dl_value(v)}"
    return out


@lru_cache(maxsize=131072)
def canonical(uri: str) -> str:
    """The hub's canonical form of an identifier (EPC URN or DL -> id.gs1.org DL; anything else as given).

    Cached: a captured document names the same identifiers in its events, hashes and indexes."""
    uri = uri.strip()
    if uri.startswith("urn:epc:"):
        return urn_to_dl(uri) or uri
    if uri.startswith(("http://", "https://")):
        return dl_canonical(uri) or uri
    return uri


def is_class_pattern(canon: str) -> bool:
    """A GTIN-only Digital Link: the class of every instance and lot of that GTIN."""
    return bool(re.fullmatch(re.escape(GS1_DL) + r"/01/\d{14}", canon))


def lot_of(canon: str) -> str | None:
    """The batch/lot (AI 10) of a canonical LGTIN Digital Link."""
    m = re.search(r"/01/\d{14}/10/([^/]+)$", canon)
    return unquote(m.group(1)) if m else None


def gcp_of_urn(urn: str) -> str | None:
    """The GS1 company prefix written in an EPC URN (its first dotted part)."""
    if not urn.startswith(("urn:epc:id:", "urn:epc:class:", "urn:epc:idpat:")):
        return None
    head = urn.split(":", 4)[4].split(".")[0]
    return head if head.isdigit() else None


def _urn_value(v: str) -> str:
    v = unquote(v)
    for ch, esc in (("%", "%25"), ('"', "%22"), ("&", "%26"), ("/", "%2F"), ("<", "%3C"), (">", "%3E"),
                    ("?", "%3F")):
        v = v.replace(ch, esc)
    return v


def dl_to_urn(uri: str, gcp_length: int) -> str | None:
    """A Digital Link as an EPC URN, given the length of its GS1 company prefix; None if not translatable."""
    canon = dl_canonical(uri)
    if canon is None:
        return None
    segs = canon[len(GS1_DL) + 1:].split("/")
    key, value, quals = segs[0], segs[1], dict(zip(segs[2::2], segs[3::2], strict=False))
    if key == "01":
        gcp, ref = value[1:1 + gcp_length], value[0] + value[1 + gcp_length:13]
        if "21" in quals and "10" not in quals:
            return f"urn:epc:id:sgtin:{gcp}.{ref}.{_urn_value(quals['21'])}"
        if "10" in quals and "21" not in quals:
            return f"urn:epc:class:lgtin:{gcp}.{ref}.{_urn_value(quals['10'])}"
        if not quals:
            return f"urn:epc:idpat:sgtin:{gcp}.{ref}.*"
        return None
    if key == "00":
        return f"urn:epc:id:sscc:{value[1:1 + gcp_length]}.{value[0]}{value[1 + gcp_length:17]}"
    if key == "414":
        ext = _urn_value(quals.get("254", "0"))
        return f"urn:epc:id:sgln:{value[:gcp_length]}.{value[gcp_length:12]}.{ext}"
    if key == "417":
        return f"urn:epc:id:pgln:{value[:gcp_length]}.{value[gcp_length:12]}"
    return None


def vocab_uri(kind: str, value: str) -> str:
    """A CBV term (bare, URN or Web URI) as its Web URI; a non-CBV URI is returned unchanged."""
    web, urn = _VOCAB[kind]
    if value.startswith(urn):
        return CBV_WEB + web + value[len(urn):]
    if ":" not in value:
        return CBV_WEB + web + value
    return value


def vocab_term(kind: str, value: str) -> str:
    """A CBV term as the bare JSON string when it is one (`shipping`); other URIs unchanged."""
    web, urn = _VOCAB[kind]
    for prefix in (CBV_WEB + web, urn):
        if value.startswith(prefix):
            return value[len(prefix):]
    return value


def cbv_urn_to_web(value: str) -> str:
    """Any CBV URN (bizstep, disp, btt, sdt, er) as its Web URI; anything else unchanged."""
    for urn, web in _URN_TO_WEB.items():
        if value.startswith(urn):
            return web + value[len(urn):]
    return value
